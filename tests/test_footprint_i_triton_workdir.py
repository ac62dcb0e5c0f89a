"""What ``python -m serving.triton`` killed outright leaves in TMPDIR: its default work directory, a copy of
every model of the repository (1.6 MB for the tiny models here, the size of the repository for real
ones), stayed for good, one more at each ``kill -9`` or OOM kill (reproduced). The next launch removes it;
a launch alive, or a work directory kept for reading after a failed server, stays."""

from __future__ import annotations

import signal
import tempfile
from pathlib import Path

import pytest

from serving import process_tree
from serving.triton import __main__ as launcher
from serving.triton.server import TritonError


class Killed(BaseException):
    """The launcher killed outright (SIGKILL) while Triton loaded: nothing of its own clean-up runs."""


class _StandIn:
    """What the launcher uses of TritonServer: ``start`` writes its log, then fails or is killed."""

    made: list[_StandIn] = []
    outcome: BaseException = TritonError("tritonserver exited")

    def __init__(self, repository: Path, workdir: Path, **_: object) -> None:
        self.workdir, self.log_path, self.flavour, self.process = (
            Path(workdir),
            Path(workdir) / "t.log",
            None,
            None,
        )
        _StandIn.made.append(self)

    def start(self) -> None:
        (self.workdir / "model_repository").mkdir()
        self.log_path.write_text("log\n")
        raise self.outcome

    def stop(self) -> None:
        pass

    def log_tail(self) -> str:
        return "log"


@pytest.fixture
def launch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """``python -m serving.triton`` over :class:`_StandIn` with TMPDIR in ``tmp_path``; signals put back."""
    saved = {sig: signal.getsignal(sig) for sig in launcher.STOP_SIGNALS}
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setattr(launcher, "TritonServer", _StandIn)
    monkeypatch.setattr(_StandIn, "made", [])
    yield lambda: launcher.main(["--model-repository", str(tmp_path)])
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_the_next_launch_removes_the_work_directory_of_a_killed_one(launch, monkeypatch) -> None:
    assert launch() == 1  # a failed server: its work directory is kept for reading
    kept = _StandIn.made[-1].workdir
    monkeypatch.setattr(_StandIn, "outcome", Killed())
    with pytest.raises(Killed):
        launch()
    killed = _StandIn.made[-1].workdir
    assert (killed / "model_repository").is_dir()
    process_tree.release(killed)  # the kernel lets its lock go as the killed process ends
    monkeypatch.setattr(_StandIn, "outcome", Killed())
    with pytest.raises(Killed):
        launch()  # a launch alive while the next one starts
    alive = _StandIn.made[-1].workdir
    monkeypatch.setattr(_StandIn, "outcome", TritonError("tritonserver exited"))
    assert launch() == 1
    assert not killed.exists(), "the killed launch's copy of the repository stayed in TMPDIR"
    assert (kept / "t.log").is_file() and (alive / "model_repository").is_dir()
    process_tree.release(alive)
