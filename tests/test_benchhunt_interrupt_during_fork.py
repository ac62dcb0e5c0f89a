"""A SIGTERM (or Ctrl-C) that arrives while the bench or the demo forks a server stops the command: Python
runs its handler inside the at-fork hooks, where the KeyboardInterrupt it raised was printed as
"Exception ignored" and dropped, and the bench measured on past its SIGTERM (kiln/processes.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The signal comes during the fork: a before-fork hook sends it once, as a kill landing then would.
SCRIPT = """
import os, signal, sys
from kiln.processes import child_options, running, stop_on_sigterm

if not child_options():
    print("no preexec_fn here")
    sys.exit(0)
stop_on_sigterm()
fired = []

def during_fork():
    if not fired:
        fired.append(True)
        os.kill(os.getpid(), signal.SIGTERM)

os.register_at_fork(before=during_fork)
cmd = [sys.executable, "-c", "import time; time.sleep(60)"]
try:
    with running(cmd, "http://127.0.0.1:1/v2/health/ready", timeout_s=1.5) as proc:
        print("ran on past the SIGTERM", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
except RuntimeError as exc:
    print(f"ran on past the SIGTERM: {exc}", flush=True)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="child_options arms a preexec_fn on Linux only")
def test_sigterm_during_a_servers_fork_stops_the_command() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    if "no preexec_fn here" in done.stdout:
        pytest.skip("no preexec_fn on this platform: nothing runs at fork")
    assert done.stdout.strip() == "interrupted", done.stdout + done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr
