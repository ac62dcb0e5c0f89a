"""``python -m export`` refuses a blank path argument instead of reading it as the working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.__main__ import main, parse_args


@pytest.mark.parametrize("argv", [["--repository", ""], ["--repository", "  "], [""], ["checkpoints", ""]])
def test_a_blank_repository_or_checkpoint_path_is_a_usage_error(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert "empty path" in capsys.readouterr().err


def test_an_unset_repository_variable_writes_nothing_into_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--repository "$REPO"`` with REPO unset: the entries went into the directory the command ran in."""
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["model.pt", "--repository", "", "--no-progress"])
    assert exit_info.value.code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_the_default_paths_still_parse() -> None:
    args = parse_args([])
    assert args.paths == ["checkpoints"] and args.repository == "model_repository"
