"""``kiln_processes``, ``kiln_process_memory_bytes`` and ``kiln_process_cpu_seconds_total`` count a
process started by any thread of the gateway, not only by its main thread: the JSON helper's forkserver
is started from a thread of the pool (serving/protocol/json_offload.py), and procfs lists a child under
the thread that forked it while that thread lives, so the helper, its forkserver and its resource
tracker were left out of every figure (a lone gateway said 1 process while 4 ran)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from serving import process_tree

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/smaps_rollup").is_file(), reason="reads Linux's procfs (smaps_rollup)"
)

# The main thread waits while another thread, still alive, holds the child it started.
CHILD_OF_A_THREAD = """
import subprocess, sys, threading
started = threading.Event()
def start():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    started.set()
    threading.Event().wait()
threading.Thread(target=start, daemon=True).start()
started.wait()
print("ready", flush=True)
threading.Event().wait()
"""


def test_a_child_started_by_a_thread_that_still_runs_is_counted_with_its_parent():
    proc = subprocess.Popen(  # a session of its own: its child goes with it at the end
        [sys.executable, "-c", CHILD_OF_A_THREAD], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        main_thread_s = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert main_thread_s == []  # the child is listed under the other thread only
        use = process_tree.usage(proc.pid)
        assert use is not None and use.processes == 2, use
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_cpu_time_of_an_exited_child_not_yet_reaped_still_counts():
    """A zombie's time reaches its parent's ``cutime`` only once reaped: left out meanwhile, the CPU
    counter fell between two scrapes, a reset to Prometheus."""
    child = subprocess.Popen(
        [sys.executable, "-c", "t = __import__('time').process_time\nwhile t() < 0.3: pass"],
        stdout=subprocess.PIPE,
    )
    try:
        child.stdout.read()  # its end of the pipe closes as it exits
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, left unreaped
        unreaped = process_tree.usage(os.getpid())
    finally:
        child.wait()
    reaped = process_tree.usage(os.getpid())
    assert unreaped is not None and reaped is not None
    # its 0.3 s in both (the reaped figure adds only this process's few ms between the two reads)
    assert 0 <= reaped.cpu_seconds - unreaped.cpu_seconds < 0.15, (unreaped, reaped)
