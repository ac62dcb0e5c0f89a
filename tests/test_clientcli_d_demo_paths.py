"""The demo's directory flags refuse a blank path, as ``python -m export`` does: ``Path("")`` is the
working directory, so ``make demo REPOSITORY=`` (an unset variable) exported into, and served, whatever
directory the command ran in."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln import demo


@pytest.mark.parametrize("flag", ["--checkpoints", "--repository"])
@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_directory_is_a_usage_error_before_anything_runs(flag, blank, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(demo, "run_demo", lambda args, target: ran.append(args))
    monkeypatch.setattr(demo, "stop_on_sigterm", lambda: None)
    with pytest.raises(SystemExit) as stopped:
        demo.main([flag, blank])
    assert stopped.value.code == 2 and not ran
    err = capsys.readouterr().err
    assert f"argument {flag}: empty path (an unset shell variable?)" in err


def test_named_directories_are_still_read_as_paths(monkeypatch, tmp_path):
    ran = []
    monkeypatch.setattr(demo, "run_demo", lambda args, target: ran.append(args))
    monkeypatch.setattr(demo, "stop_on_sigterm", lambda: None)
    demo.main(["--checkpoints", str(tmp_path / "ck"), "--repository", str(tmp_path / "repo")])
    assert ran[0].checkpoints == tmp_path / "ck" and ran[0].repository == tmp_path / "repo"
    demo.main([])
    assert ran[1].checkpoints == Path("checkpoints") and ran[1].repository == Path("model_repository")
