"""A bench killed outright (``kill -9``, the OOM killer) while it measures the PyTorch reference in
several processes takes their manager with it: the manager (the processes' shared barrier) served on
for ever, and with it the pool's resource tracker, holding its semaphores in /dev/shm
(``bench.translation_engines.PyTorchProcesses``)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started that still run (procfs)."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in children.read_text().split()]
    return found


def _ends_within(pid: int, timeout_s: float) -> bool:
    """Whether process ``pid`` (not this one's child) ends within ``timeout_s``: its pidfd turns readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout_s)[0])
    finally:
        os.close(fd)


def test_the_manager_ends_when_the_bench_running_it_is_killed() -> None:
    bench = subprocess.Popen([sys.executable, "-c", BENCH], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    started: list[int] = []
    try:
        assert bench.stdout.readline().strip() == "started"
        started = _children(bench.pid)  # the manager and the resource tracker
        assert started
        bench.kill()
        bench.wait()
        running = [pid for pid in started if not _ends_within(pid, 10)]
        assert not running, f"processes {running} of the killed bench ran on"
    finally:
        bench.kill()
        bench.wait()
        for pid in started:  # the resource tracker ends by itself once they are gone, unlinking what it holds
            with contextlib.suppress(OSError):
                if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
