"""A gateway stopped by SIGTERM runs its exit handlers, then ends by that signal (serving.app.end_by_sigterm).

A second SIGTERM while those handlers ran was handled by end_by_sigterm again: it ran every handler a
second time from the start, and one that blocked (a flush to a collector that never answers) blocked
again, so that no SIGTERM ended the gateway any more (before those handlers ran, the first one did)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

# an exit handler that a second SIGTERM reaches while it runs (it sends that SIGTERM itself, then waits
# for as long as a blocked flush would: never, where the signal ends the process)
PROGRAM = """
import atexit, os, signal, sys, threading
from serving.app import end_by_sigterm

def handler():
    with open(sys.argv[1], "a") as out:
        out.write("ran\\n")
    os.kill(os.getpid(), signal.SIGTERM)
    threading.Event().wait(60)

atexit.register(handler)
signal.signal(signal.SIGTERM, end_by_sigterm)
os.kill(os.getpid(), signal.SIGTERM)
threading.Event().wait(60)
"""


def test_a_sigterm_while_the_exit_handlers_run_ends_the_process_without_running_them_again(tmp_path: Path):
    runs = tmp_path / "runs"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(runs)], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGTERM, proc.stderr
    assert runs.read_text().splitlines() == ["ran"], proc.stderr
