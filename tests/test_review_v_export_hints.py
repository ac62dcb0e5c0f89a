"""The hints that name the command behind ``make export`` give one a user can paste as printed: the
served repository's own path, shell-quoted, on one line. The stale-entry warning named
``python -m export`` alone, which writes ./model_repository, not the repository being served; the
Triton launcher printed its hint as rich markup (a path holding ``[/x]`` ended it in a traceback) and
wrapped it at 80 columns, mid-path; a path with a space split into two words."""

from __future__ import annotations

import json
import logging
import shlex

import pytest

from kiln.versions import current_version


def _command(text: str) -> list[str]:
    """The ``python -m export ...`` command a hint names, split as a shell splits it."""
    start = text.index("python -m export")
    return shlex.split(text[start : text.index(")", start)])


def _export(repository) -> list[str]:
    return ["python", "-m", "export", "CHECKPOINTS", "--repository", str(repository)]


def test_the_stale_entry_warning_names_the_served_repository(tmp_path, caplog) -> None:
    from serving.execution.repository import Repository

    root = tmp_path / "served repo"
    (root / "old").mkdir(parents=True)
    (root / "old" / "config.pbtxt").write_text('name: "old"\nplatform: "onnxruntime_onnx"\n')
    kiln = {
        "model": {"name": "resnet18", "args": {}},
        "export": {"export_version": current_version("resnet18") - 1},
    }
    (root / "old" / "kiln.json").write_text(json.dumps(kiln))
    with caplog.at_level(logging.WARNING, logger="serving.execution.repository"):
        Repository(root)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert _command(warning) == _export(root)


def test_the_gateways_missing_repository_hint_quotes_its_path(tmp_path) -> None:
    from serving.__main__ import main

    missing = tmp_path / "my models"
    with pytest.raises(SystemExit) as exit_:
        main(["--model-repository", str(missing)])
    assert _command(str(exit_.value)) == _export(missing)


def test_the_triton_launchers_hint_is_one_pasteable_line_whatever_the_path(tmp_path, capsys) -> None:
    from serving.triton.__main__ import main

    missing = tmp_path / "a[/x] directory whose name runs well past eighty columns of a terminal" / "repo"
    assert main(["--model-repository", str(missing)]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "python -m export" in line]
    assert f"model repository {missing} does not exist" in line
    assert _command(line) == _export(missing)


def test_the_checkpoints_directory_and_empty_repository_hints_quote_their_path(tmp_path, caplog) -> None:
    from serving.__main__ import _check_entries

    checkpoints = tmp_path / "my runs"
    checkpoints.mkdir()
    (checkpoints / "lenet.pt").write_bytes(b"not read")
    with pytest.raises(SystemExit) as stopped:
        _check_entries(checkpoints)
    said = str(stopped.value.code)
    start = said.index("python -m export")
    assert shlex.split(said[start : said.index("`", start)]) == [
        "python", "-m", "export", str(checkpoints), "--repository", "model_repository"
    ]  # fmt: skip
    empty = tmp_path / "empty repo"
    empty.mkdir()
    with caplog.at_level(logging.WARNING, logger="serving"):
        _check_entries(empty)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert _command(warning) == _export(empty)


def test_the_triton_launchers_empty_repository_hint_names_it(tmp_path, capsys, monkeypatch) -> None:
    """It said ``python -m export`` alone, which writes ./model_repository, not the one launched."""
    import tempfile

    from serving.triton import server
    from serving.triton.__main__ import main

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(server, "find_triton", lambda: server.TritonInstall(tmp_path))  # never launched
    repo = tmp_path / "empty repo"
    repo.mkdir()
    ports = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    assert main(["--model-repository", str(repo), *ports]) == 1
    out = capsys.readouterr().err.replace("\n", "")  # an error: on stderr
    assert _command(out) == _export(repo)
