"""`python -m bench` refusing, before anything runs, the flags a user mistypes: an --output it could
never write, and identity translators that do not exist or are named twice."""

from __future__ import annotations

import json

import pytest

from bench import __main__ as bench_main
from bench import inputs


def _repository(tmp_path):
    """A repository with a classify and a translate entry (kiln.json only) and the translator's checkpoint."""
    repo, checkpoints = tmp_path / "repo", tmp_path / "ckpt"
    for name, task in (("lenet", "classify"), ("transformer", "translate")):
        (repo / name).mkdir(parents=True)
        (repo / name / "kiln.json").write_text(json.dumps({"task": task}))
    checkpoints.mkdir()
    (checkpoints / "transformer.pt").write_bytes(b"")
    return ["--repository", str(repo), "--checkpoints", str(checkpoints), "--classifier", "lenet"]


@pytest.fixture
def nothing_runs(monkeypatch):
    """The parts the bench would run, recorded instead of measured."""
    ran: list[set[str]] = []
    monkeypatch.setattr(
        bench_main, "run_sections", lambda args, profile, out, wanted, results: ran.append(wanted)
    )
    monkeypatch.setattr(bench_main, "speed_probe", lambda: {})
    return ran


def test_an_output_under_a_file_is_one_line_before_anything_runs(tmp_path, nothing_runs):
    """It was a NotADirectoryError traceback from ``mkdir``."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    argv = [*_repository(tmp_path), "--only", "engines", "--output", str(blocker / "run")]
    with pytest.raises(SystemExit, match=f"cannot be created: {blocker} is a file, not a directory"):
        bench_main.main(argv)
    assert not nothing_runs and blocker.read_text() == "x"


def test_an_output_this_user_cannot_write_is_refused_before_the_measurements(tmp_path, monkeypatch):
    """A read-only --output was found only when report.md was written, every part measured and lost
    (root writes anywhere, so the permission is faked)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = inputs.os.access
    monkeypatch.setattr(inputs.os, "access", lambda p, mode: str(p) != str(locked) and real_access(p, mode))
    assert (
        inputs.output_problem(locked)
        == f"--output {locked} cannot be written: {locked} is not writable by this user"
    )
    assert "cannot be written" in inputs.output_problem(locked / "new" / "run")
    assert inputs.output_problem(tmp_path / "new" / "run") is None


def test_an_unknown_identity_translator_is_refused_before_the_translation_part_runs(tmp_path, nothing_runs):
    """A misspelt name was trained (which failed), and said so only in the report once the whole
    translation part had been measured, with exit status 0."""
    argv = [*_repository(tmp_path), "--only", "translation", "--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="--identity-translators gru_atention: not a registered translator"):
        bench_main.main([*argv, "--identity-translators", "gru_attention", "gru_atention"])
    assert not nothing_runs and not (tmp_path / "out").exists()
    bench_main.main([*argv, "--identity-translators", "gru_attention"])
    assert nothing_runs == [{"translation"}]


def test_an_identity_translator_named_twice_is_checked_once():
    """Named twice it was trained, measured and listed in the report's identity table twice."""
    from bench.translation_identity import identity_models

    wanted = ["gru_attention", "transformer", "gru_attention"]
    assert identity_models("transformer", wanted) == ["gru_attention"]


def test_an_interrupted_run_keeps_the_empty_output_the_user_made_and_removes_its_own(tmp_path, monkeypatch):
    """Ctrl-C before anything was written removed the run's empty --output, also one the user had made."""

    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_main, "run_sections", interrupted)
    monkeypatch.setattr(bench_main, "speed_probe", lambda: {})
    argv = [*_repository(tmp_path), "--only", "engines", "--output"]
    mine, its_own = tmp_path / "mine", tmp_path / "its-own"
    mine.mkdir()
    for out in (mine, its_own):
        with pytest.raises(SystemExit) as stopped:
            bench_main.main([*argv, str(out)])
        assert stopped.value.code == 130
    assert mine.is_dir() and not its_own.exists()
