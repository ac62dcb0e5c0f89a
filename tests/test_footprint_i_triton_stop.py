"""What a Triton stopped while it loaded leaves in /dev/shm: every Ctrl-C of ``python -m serving.triton``
before the server was ready left a few 1 MiB python-backend regions there for good (reproduced: 4 from
one Ctrl-C 6 s into a start), because the sweep ran while the SIGKILLed stubs still mapped them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from serving.triton import server as triton_server
from serving.triton.shm_regions import SHM_PREFIX, sweep_shm_regions

# A fake tritonserver: a process-group leader that SIGTERM ends at once, and its python-backend stub, a
# child in its group that maps a region until it is killed (as the real stub does while Triton loads).
FAKE_SERVER = """
import subprocess, sys
stub = subprocess.Popen([sys.executable, "-c", sys.argv[2], sys.argv[1]], stdout=subprocess.PIPE)
print(stub.stdout.readline().decode().strip(), flush=True)
stub.wait()
"""
FAKE_STUB = """
import mmap, sys, threading
with open(sys.argv[1], "w+b") as f:
    f.truncate(4096)
    region = mmap.mmap(f.fileno(), 4096)
print("mapped", flush=True)
threading.Event().wait()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="procfs")
def test_a_region_a_killed_stub_still_mapped_when_stop_began_is_swept(tmp_path, monkeypatch):
    region = tmp_path / f"{SHM_PREFIX}stub-of-a-stopped-start"
    proc = subprocess.Popen(
        [sys.executable, "-c", FAKE_SERVER, str(region), FAKE_STUB],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline().strip() == b"mapped"
        server = triton_server.TritonServer(tmp_path / "repo", tmp_path / "work", http_port=0)
        server.process, server._launched_at = proc, time.time() - 1.0
        monkeypatch.setattr(
            triton_server, "sweep_shm_regions", lambda since: sweep_shm_regions(since, tmp_path)
        )
        # A SIGKILL lands after killpg returns: its first one here lands late (never), as it may on a
        # loaded machine, where the stub still mapped its region when the sweep looked.
        killpg, late = os.killpg, []

        def landing_late(pgid: int, sig: int) -> None:
            if sig == signal.SIGKILL and not late:
                late.append(pgid)
                return
            killpg(pgid, sig)

        monkeypatch.setattr(os, "killpg", landing_late)
        server.stop(grace_s=5.0)
        assert late, "stop() did not SIGKILL the server's process group"
        assert not region.exists(), "the stopped start's region stayed in /dev/shm"
    finally:
        monkeypatch.undo()
        proc.stdout.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
