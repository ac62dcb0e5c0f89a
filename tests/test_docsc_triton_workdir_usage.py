"""``python -m serving.triton --workdir`` on a path Triton's python backend cannot start models under
(whitespace, a character outside ASCII) is a usage error, as a ``--host`` or port refusal is: one line
and exit 2, before anything starts. It was refused inside the start, after the launcher had printed
"starting tritonserver on ... (log: <that workdir>/tritonserver.log); waiting up to 180 s", and exited
1, the status of a server that ran and failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.triton.__main__ import main


@pytest.mark.parametrize(("name", "problem"), [("my work", "whitespace"), ("wörk", "outside ASCII")])
def test_an_unusable_workdir_is_a_usage_error_before_the_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, problem: str
) -> None:
    repository = tmp_path / "repository"
    repository.mkdir()
    workdir = tmp_path / name
    ports = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    code = main(["--model-repository", str(repository), "--workdir", str(workdir), *ports])
    said = capsys.readouterr()
    assert code == 2
    assert "starting tritonserver" not in said.out + said.err
    assert problem in said.err and "--workdir, or TMPDIR" in said.err
    assert not workdir.exists()
