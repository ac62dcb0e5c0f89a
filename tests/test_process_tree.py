"""What the gateway's processes use together (serving/process_tree.py), as its metrics and the bench read
it: every process under the root counted, shared pages once, CPU of exited children kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving import process_tree
from serving.metrics import GatewayMetrics

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/smaps_rollup").is_file(), reason="reads Linux's procfs (smaps_rollup)"
)

# A parent and a child each touching every page of one 48 MiB file they both map, then waiting.
SHARED_MAPPING = """
import mmap, os, sys, time
path = sys.argv[1]
with open(path, "wb") as f:
    f.truncate(48 << 20)
with open(path, "r+b") as f:
    view = mmap.mmap(f.fileno(), 0)
def touch():
    return sum(view[i] for i in range(0, len(view), 4096))
child = os.fork()
touch()
if child:
    print("ready", flush=True)
time.sleep(600)
"""


def resident_kib(pid: int) -> int:
    return int(
        next(
            line.split()[1]
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        )
    )


def test_a_tree_counts_every_process_under_its_root_and_their_shared_pages_once(tmp_path):
    proc = subprocess.Popen(  # a session of its own: the forked child goes with it at the end
        [sys.executable, "-c", SHARED_MAPPING, str(tmp_path / "weights")],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        (child,) = (int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split())
        deadline = time.monotonic() + 30
        while resident_kib(child) < 48 * 1024:  # the child touches its pages on its own time
            assert time.monotonic() < deadline
            time.sleep(0.02)
        use = process_tree.usage(proc.pid)
        assert use is not None and use.processes == 2
        resident = (resident_kib(proc.pid) + resident_kib(child)) * 1024
        # resident sizes count the 48 MiB twice; the proportional sizes once
        assert use.pss_bytes < resident - (40 << 20), (use, resident)
        assert use.pss_bytes > 48 << 20
    finally:  # the whole group: killing the parent alone left its child asleep for ten minutes
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert process_tree.usage(proc.pid) is None and process_tree.usage(None) is None


def test_cpu_time_of_an_exited_child_stays_in_its_parents_count():
    before = process_tree.usage(os.getpid())
    subprocess.run(
        [sys.executable, "-c", "t = __import__('time').process_time\nwhile t() < 0.3: pass"], check=True
    )
    after = process_tree.usage(os.getpid())
    assert before is not None and after is not None
    # the child's 0.3 s as /proc counts it: in clock ticks, its user and its system time each rounded
    # down (0.29 s), and 30.31 - 30.01 < 0.3 in floats; a child's time lost would be all of it
    assert after.cpu_seconds - before.cpu_seconds >= 0.25


def test_the_metrics_page_reads_the_tree_of_the_root_it_was_given():
    page = GatewayMetrics().render().decode()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in page.splitlines()
        if line.startswith(
            ("kiln_process_memory_bytes ", "kiln_process_cpu_seconds_total ", "kiln_processes ")
        )
    }
    assert values["kiln_processes"] >= 1 and values["kiln_process_memory_bytes"] > 0
    assert values["kiln_process_cpu_seconds_total"] > 0
    gone = subprocess.Popen(["true"])
    gone.wait()
    page = GatewayMetrics(tree_root=gone.pid).render().decode()
    assert "kiln_processes" not in page  # a root that is gone (or no procfs): no series, no error
