"""A bench killed outright (``kill -9``, the OOM killer) while its GPU profile's client processes load a
gateway takes them with it: a ``ProcessPoolExecutor``'s process holds both ends of its call queue, so
each finished its run, then waited for its next call for ever, with the pool's resource tracker
(``kiln.processes.end_with_parent``)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.killed_parent import children, kill, killed_at_end, running_on

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


def test_the_client_processes_end_when_the_bench_running_them_is_killed() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(60)
        url = f"127.0.0.1:{server.getsockname()[1]}"
        bench = subprocess.Popen([sys.executable, "-c", BENCH, url], cwd=ROOT)
        with killed_at_end(bench) as clients:
            connection, _ = server.accept()  # a client process runs its load
            clients += children(bench.pid)
            assert clients
            kill(bench)
            running = running_on(clients, 10)
            assert not running, f"processes {running} of the killed bench ran on"
            connection.close()
