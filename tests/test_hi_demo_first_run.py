"""`make demo` as a new user meets it: in a shell that keeps the ``KILN_*`` variables of an earlier session
the demo serves what it exported on the embedded ONNX Runtime, as its output shows, whatever backend they
name; checkpoints left from an earlier run that export would refuse stop it at once, naming the way out;
and it ends saying what to run next."""

from __future__ import annotations

import contextlib
import re
import shlex
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from kiln import demo
from serving.__main__ import parse_args
from tests.repo_fixtures import _tiny_checkpoint, write_entry_without_model
from tests.test_makefile_targets import dry_run


def test_a_kiln_backend_left_in_the_shell_does_not_send_the_demo_gateway_to_triton(monkeypatch, tmp_path):
    """``KILN_BACKEND=triton`` (from a ``make serve BACKEND=triton`` session) made the demo's gateway wait
    for a Triton at 127.0.0.1:8001, and the demo stop after 120 s with "was not ready"."""
    monkeypatch.setenv("KILN_BACKEND", "triton")
    monkeypatch.setenv("KILN_TRITON_URL", "127.0.0.1:9")
    seen: dict[str, list[str]] = {}

    @contextlib.contextmanager
    def fake_running(cmd, ready_url, **kwargs):
        seen["cmd"] = cmd
        yield None

    monkeypatch.setattr(demo, "running", fake_running)
    with demo.gateway(tmp_path):
        pass
    cmd = seen["cmd"]
    assert cmd[1:3] == ["-m", "serving"]
    settings = parse_args(cmd[3:])
    assert settings.backend == "onnxruntime"
    assert settings.model_repository == tmp_path


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize(
    ("repository", "gpu"),
    [(Path("model_repository"), False), (Path("runs/it's a repo"), False), (Path("r"), True)],
)
def test_the_demo_ends_with_the_make_serve_command_that_serves_its_repository(
    tmp_path, monkeypatch, repository, gpu
):
    """The demo ended at "Demo finished" and its gateway stopped, naming nothing to run next: its last
    line is the ``make serve`` command that serves the same repository (on CUDA too) until Ctrl-C."""
    line = demo.next_steps(repository, gpu)
    command = re.search(r"`(make serve[^`]*)`", line)
    assert command is not None, line
    variables = shlex.split(command.group(1))[2:]
    assert ("GPU=1" in variables) == gpu
    words = dry_run(tmp_path, "serve", *variables)
    assert words[words.index("-m") + 1] == "serving"
    monkeypatch.delenv("KILN_MODEL_REPOSITORY", raising=False)
    assert parse_args(words[words.index("-m") + 2 :]).model_repository == repository
    assert "8000" in line and "8001" in line


def run_demo_stages(checkpoints: Path, monkeypatch) -> list[str]:
    """The stage titles ``run_demo`` starts (each answered as having worked) until it serves."""
    stages: list[str] = []

    def stage(title, cmd, may_refuse=False):
        stages.append(title.split()[0])
        return 0.0

    def stop_here(repository, **served):
        raise SystemExit("served")

    monkeypatch.setattr(demo, "run_stage", stage)
    monkeypatch.setattr(demo, "gateway", stop_here)
    args = SimpleNamespace(checkpoints=checkpoints, repository=checkpoints / "repo", fresh=False, gpu=False)
    with pytest.raises(SystemExit) as stopped:
        demo.run_demo(args, demo.CPU)
    stages.append(str(stopped.value.code))
    return stages


def test_a_truncated_checkpoint_left_from_an_earlier_run_stops_the_demo_at_once_naming_fresh(
    tmp_path, monkeypatch, capsys
):
    """The demo reused a checkpoint export then refused ("not a PyTorch checkpoint ... or a truncated
    one"), and stopped after export with no word of the way out, ``make demo FRESH=1``."""
    sound = _tiny_checkpoint(tmp_path / "sound.pt", "lenet", 0)
    (tmp_path / "transformer.pt").write_bytes(sound.read_bytes())
    (tmp_path / "resnet18.pt").write_bytes(sound.read_bytes()[:4000])
    stages = run_demo_stages(tmp_path, monkeypatch)
    assert stages[:-1] == []  # nothing trained, exported or served
    assert "resnet18.pt cannot be reused" in stages[-1] and "make demo FRESH=1" in stages[-1]
    assert "truncated" in capsys.readouterr().out


def test_sound_checkpoints_are_reused_and_say_how_make_retrains_them(tmp_path, monkeypatch, capsys):
    sound = _tiny_checkpoint(tmp_path / "sound.pt", "lenet", 0)
    for name in ("resnet18.pt", "transformer.pt"):
        (tmp_path / name).write_bytes(sound.read_bytes())
    assert run_demo_stages(tmp_path, monkeypatch) == ["Export", "served"]
    out = capsys.readouterr().out
    assert out.count("reusing") == 2 and "make demo FRESH=1" in out


def test_a_ctrl_c_says_the_demo_stopped_everything_and_that_make_demo_goes_on_from_there(monkeypatch, capsys):
    def interrupted(args, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_demo", interrupted)
    monkeypatch.setattr(demo, "stop_on_sigterm", lambda: None)  # pytest keeps its own SIGTERM handling
    with pytest.raises(SystemExit) as stopped:
        demo.main([])
    assert stopped.value.code == 130
    out = capsys.readouterr().out
    assert "every process it started is stopped" in out and "`make demo` again goes on" in out


def test_a_stale_entry_the_gateway_cannot_load_stops_the_demo_at_once_naming_it(tmp_path, capsys):
    """The demo serves every entry of its repository, and the gateway is ready only with every entry
    loaded: an entry left beside the demo's that cannot load kept it "not ready", and the demo waited
    its 120 s, then stopped saying "was not ready" alone."""
    from tests.test_triton_leftovers import _config

    write_entry_without_model(tmp_path, "stale", _config("stale"))
    started = time.monotonic()
    with pytest.raises(SystemExit) as stopped, demo.gateway(tmp_path, timeout_s=30):
        pytest.fail("the gateway was ready")
    assert stopped.value.code == 1
    assert time.monotonic() - started < 25
    out = " ".join(capsys.readouterr().out.split())
    assert f"will never be ready: {tmp_path / 'stale'} did not load (" in out and "model.onnx" in out
    assert "move that away" in out
