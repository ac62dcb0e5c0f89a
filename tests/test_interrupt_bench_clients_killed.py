"""A bench killed outright (``kill -9``, the OOM killer) while its GPU profile's client processes load a
gateway takes them with it: a ``ProcessPoolExecutor``'s process holds both ends of its call queue, so
each finished its run, then waited for its next call for ever, with the pool's resource tracker
(``kiln.processes.end_with_parent``)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="procfs and pidfds are Linux's")

# The bench's clients, against a "server" that takes their connection and never answers: mid-run.
BENCH = textwrap.dedent(
    """
    import sys
    import numpy as np
    from bench.gpu_serving import closed_loop_processes
    closed_loop_processes(sys.argv[1], "m", np.zeros((1, 4), np.uint8), 1, 60.0, 1)
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


def test_the_client_processes_end_when_the_bench_running_them_is_killed() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(60)
        url = f"127.0.0.1:{server.getsockname()[1]}"
        bench = subprocess.Popen([sys.executable, "-c", BENCH, url], cwd=ROOT)
        clients: list[int] = []
        try:
            connection, _ = server.accept()  # a client process runs its load
            clients = _children(bench.pid)
            assert clients
            bench.kill()
            bench.wait()
            running = [pid for pid in clients if not _ends_within(pid, 10)]
            assert not running, f"processes {running} of the killed bench ran on"
            connection.close()
        finally:
            bench.kill()
            bench.wait()
            for pid in clients:  # the resource tracker ends by itself once they are gone, unlinking its own
                with contextlib.suppress(OSError):
                    if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                        os.kill(pid, signal.SIGKILL)
