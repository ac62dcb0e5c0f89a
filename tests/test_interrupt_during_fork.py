"""A SIGTERM (or Ctrl-C) that arrives while the bench or the demo forks a server (``running``) or a
*stage* (training, an export: ``run_child``) stops the command and kills the child: Python runs its
handler inside the at-fork hooks, where the KeyboardInterrupt it raised was printed as "Exception
ignored" and dropped, so the bench measured on past its SIGTERM and a stage ran to its end (minutes of
training) (kiln/processes.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The signal comes during the fork: a before-fork hook sends it once, as a kill landing then would. The
# stage sleeps 3 s: run to its end, it says so; killed, the call returns (the child reaped) at once.
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
cmd = [sys.executable, "-c", "import time; time.sleep(3)"]
try:
    STAGE
    print("ran the stage to its end past the SIGTERM", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""

STAGES = {
    "server": "with running(cmd, 'http://127.0.0.1:1/v2/health/ready', timeout_s=1.5): pass",
    "demo": "from kiln.demo import run_stage; run_stage('stage', cmd)",
    "bench": "from bench.translation_identity import _stage; _stage('stage', cmd, print)",
}


@pytest.mark.skipif(sys.platform != "linux", reason="child_options arms a preexec_fn on Linux only")
@pytest.mark.parametrize("stage", ["server", "demo", "bench"])
def test_sigterm_during_a_stages_fork_stops_the_command_and_the_stage(stage) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = SCRIPT.replace("STAGE", STAGES[stage])
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    if "no preexec_fn here" in done.stdout:
        pytest.skip("no preexec_fn on this platform: nothing runs at fork")
    assert done.stdout.strip().splitlines()[-1:] == ["interrupted"], done.stdout + done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr
