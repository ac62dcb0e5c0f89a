"""A demo stage (or a server) a signal ended (the OOM killer's SIGKILL mid-training, a SIGINT the demo itself ignored)
stops the demo with a shell's status for it, 128 + the signal's number, and names the signal: it said
"failed (exit -9)" and exited 247 (SystemExit(-9)), which no shell or CI reads as a signal."""

from __future__ import annotations

import signal
import sys

import pytest

from kiln import demo


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGKILL, 137), (signal.SIGINT, 130)])
def test_a_stage_a_signal_ended_stops_the_demo_with_128_plus_its_number(sig, status):
    # SIG_DFL first: a Python child turns SIGINT into KeyboardInterrupt, and exits through it
    code = f"import os, signal; signal.signal(2, signal.SIG_DFL); os.kill(os.getpid(), {int(sig)})"
    with demo.console.capture() as captured, pytest.raises(SystemExit) as stopped:
        demo.run_stage("Train", [sys.executable, "-c", code])
    assert stopped.value.code == status
    out = captured.get()
    assert f"Train failed: it was killed by {sig.name}" in out and "-9" not in out and "-2" not in out
    assert ("out of memory" in out) == (sig == signal.SIGKILL)


def test_a_stage_that_exits_with_an_error_keeps_its_status():
    with demo.console.capture() as captured, pytest.raises(SystemExit) as stopped:
        demo.run_stage("Export", [sys.executable, "-c", "raise SystemExit(3)"])
    assert stopped.value.code == 3 and "Export failed: it exited with 3;" in captured.get()


def test_a_server_a_signal_ended_before_it_was_ready_is_named_so(tmp_path):
    from kiln.processes import running

    cmd = [sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"]
    with pytest.raises(RuntimeError) as failed, running(cmd, "http://127.0.0.1:1/", timeout_s=60):
        pass
    assert "was killed by SIGKILL (out of memory?" in str(failed.value) and "-9" not in str(failed.value)
