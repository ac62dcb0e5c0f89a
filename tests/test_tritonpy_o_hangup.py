"""``python -m serving.triton`` when its terminal closes: SIGHUP ended the launcher at once, its
``finally`` unrun, so the temporary work directory (a copy of every model of the repository, the
flavour Triton ran) stayed in /tmp after each closed terminal or dropped ssh session. Tritonserver
itself went (it is stopped with its parent); the copy did not.

The launcher runs in a child process over a stand-in server (no tritonserver needed): before the fix
the hangup killed that process, which a test in pytest's own process cannot survive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAUNCHER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from types import SimpleNamespace

    from serving.triton import __main__ as launcher

    class StandIn:
        host = address = "127.0.0.1"
        http_url = grpc_url = "127.0.0.1:1"
        metrics_url = "http://127.0.0.1:2/metrics"
        flavour = None

        def __init__(self, repository, workdir, **_):
            self.workdir, self.log_path = Path(workdir), Path(workdir) / "tritonserver.log"
            self.process, self.hung_up = SimpleNamespace(poll=self.poll), False

        def start(self):
            (self.workdir / "model_repository").mkdir(parents=True)
            self.log_path.write_text("log\\n")

        def poll(self):
            if self.hung_up:
                return 0  # exited on its own: what a hangup that leaves it serving comes to here
            self.hung_up = True
            os.kill(os.getpid(), signal.SIGHUP)  # the terminal closes while it serves

        def log_tail(self):
            return "log"

        def stop(self):
            Path(sys.argv[2]).write_text("stopped")

    launcher.TritonServer = StandIn
    raise SystemExit(launcher.main(["--model-repository", sys.argv[1]]))
    """
)


def _launch(tmp_path: Path, hangup: object) -> tuple[subprocess.CompletedProcess, Path]:
    """Run the launcher with SIGHUP at ``hangup`` (a terminal's default, or nohup's SIG_IGN)."""
    temp, stopped = tmp_path / "tmp", tmp_path / "stopped"
    temp.mkdir()
    run = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(tmp_path), str(stopped)],
        env={**os.environ, "TMPDIR": str(temp), "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, hangup),
    )
    return run, stopped


def test_a_hangup_stops_the_server_and_removes_the_temporary_work_directory(tmp_path: Path) -> None:
    run, stopped = _launch(tmp_path, signal.SIG_DFL)
    assert run.returncode == 0, f"the launcher died on the hangup ({run.returncode}): {run.stderr[-500:]}"
    assert stopped.is_file(), "the server was not stopped"
    assert not list((tmp_path / "tmp").iterdir()), "the temporary work directory stayed behind"


def test_under_nohup_a_hangup_leaves_it_serving(tmp_path: Path) -> None:
    """nohup's ignored SIGHUP is kept: the launcher serves on until the server exits by itself (1)."""
    run, stopped = _launch(tmp_path, signal.SIG_IGN)
    assert run.returncode == 1, run.stdout[-500:] + run.stderr[-500:]
    assert "tritonserver exited" in run.stderr and stopped.is_file()  # an error: on stderr
