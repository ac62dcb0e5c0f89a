"""``make demo`` stopped with Ctrl-C while it trains, then run again: it resumes the run it left
(``<name>.resume.pt``) instead of starting over at epoch 1 and replacing the epochs already trained; a
resume file the trainer refuses (another run's) gives way to a new run, and ``FRESH=1`` trains anew."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from kiln import demo


def test_a_run_an_interrupted_demo_left_is_resumed_first(tmp_path):
    (tmp_path / "resnet18.resume.pt").write_bytes(b"")
    first, then = demo.training_commands(
        "training.classify", ["--model", "resnet18"], tmp_path, "resnet18", False
    )
    assert first == [
        sys.executable,
        "-m",
        "training.classify",
        "--model",
        "resnet18",
        "--resume",
        str(tmp_path / "resnet18.resume.pt"),
        "--output-dir",
        str(tmp_path),
    ]
    assert "--resume" not in then


@pytest.mark.parametrize("left", [None, "resnet18.resume.pt"])
def test_fresh_or_no_resume_file_trains_a_new_run_only(tmp_path, left):
    if left:
        (tmp_path / left).write_bytes(b"")
    commands = demo.training_commands(
        "training.classify", ["--model", "resnet18"], tmp_path, "resnet18", bool(left)
    )
    assert len(commands) == 1 and "--resume" not in commands[0]


def run_demo_recording(tmp_path, monkeypatch, refuse_resume: bool) -> list[list[str]]:
    """The stage commands ``run_demo`` runs (the gateway stops it after export), each stage answered as
    having worked, a ``--resume`` one refused where ``refuse_resume``."""
    ran: list[list[str]] = []

    def stage(title, cmd, may_refuse=False):
        ran.append(cmd)
        return None if (refuse_resume and may_refuse and "--resume" in cmd) else 0.0

    def stop_here(repository, **served):
        raise SystemExit(0)

    monkeypatch.setattr(demo, "run_stage", stage)
    monkeypatch.setattr(demo, "gateway", stop_here)
    monkeypatch.setattr("training.checkpoint.load_checkpoint", lambda path: {})  # stand-ins, read as sound
    args = SimpleNamespace(checkpoints=tmp_path, repository=tmp_path / "repo", fresh=False)
    with pytest.raises(SystemExit):
        demo.run_demo(args, demo.CPU)
    return ran


def test_the_demo_run_again_resumes_the_training_ctrl_c_stopped(tmp_path, monkeypatch):
    (tmp_path / "resnet18.resume.pt").write_bytes(b"")
    (tmp_path / "transformer.resume.pt").write_bytes(b"")
    ran = run_demo_recording(tmp_path, monkeypatch, refuse_resume=False)
    trained = [cmd for cmd in ran if cmd[2].startswith("training.")]
    assert [cmd[2] for cmd in trained] == ["training.classify", "training.translate"]
    assert [cmd[cmd.index("--resume") + 1] for cmd in trained] == [
        str(tmp_path / "resnet18.resume.pt"),
        str(tmp_path / "transformer.resume.pt"),
    ]


def test_a_resume_file_the_trainer_refuses_gives_way_to_a_new_run(tmp_path, monkeypatch, capsys):
    (tmp_path / "transformer.resume.pt").write_bytes(b"")
    (tmp_path / "resnet18.pt").write_bytes(b"")
    ran = run_demo_recording(tmp_path, monkeypatch, refuse_resume=True)
    trained = [cmd for cmd in ran if cmd[2].startswith("training.")]
    assert ["--resume" in cmd for cmd in trained] == [True, False]
    assert trained[1][2] == "training.translate"
    assert "training a new one" in capsys.readouterr().out


def test_a_stage_that_refuses_is_handed_back_only_where_the_caller_allows_it(tmp_path):
    refuses = [sys.executable, "-c", "raise SystemExit(2)"]
    assert demo.run_stage("Train", refuses, may_refuse=True) is None
    with pytest.raises(SystemExit) as stopped:
        demo.run_stage("Train", refuses)
    assert stopped.value.code == 2
