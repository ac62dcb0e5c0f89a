"""A bench killed outright (``kill -9``, the OOM killer) while it measures the PyTorch reference in
several processes takes their manager with it: the manager (the processes' shared barrier) served on
for ever, and with it the pool's resource tracker, holding its semaphores in /dev/shm
(``bench.translation_engines.PyTorchProcesses``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.killed_parent import children, kill, killed_at_end, running_on

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="procfs and pidfds are Linux's")

# The bench's PyTorch processes, their pool left out (it loads a checkpoint): the manager alone.
BENCH = textwrap.dedent(
    """
    import multiprocessing.context, threading
    from pathlib import Path

    class NoPool:
        def terminate(self): pass
        def join(self): pass

    multiprocessing.context.SpawnContext.Pool = lambda self, *args, **kwargs: NoPool()
    from bench.translation_engines import PyTorchProcesses
    with PyTorchProcesses(Path("model.pt"), [], [], 1, 1) as processes:
        processes._manager.Barrier(1)  # what a row asks of it first
        print("started", flush=True)
        threading.Event().wait()
    """
)


def test_the_manager_ends_when_the_bench_running_it_is_killed() -> None:
    bench = subprocess.Popen([sys.executable, "-c", BENCH], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    with killed_at_end(bench) as started:
        assert bench.stdout.readline().strip() == "started"
        started += children(bench.pid)  # the manager and the resource tracker
        assert started
        kill(bench)
        running = running_on(started, 10)
        assert not running, f"processes {running} of the killed bench ran on"
