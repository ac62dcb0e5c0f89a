"""What a Triton stopped while it loaded leaves in /tmp: tritonserver handles SIGTERM and SIGINT only once
its models are loaded, so every Ctrl-C (or SIGTERM) of ``python -m serving.triton`` during a start killed
it before its python backend removed its ``/tmp/python_env_XXXXXX`` directory: one more, empty, for good
at each (reproduced: one per interrupted start; none after a stop of a ready server)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from serving.triton import server as triton_server
from serving.triton import shm_regions
from serving.triton.shm_regions import ENV_PREFIX, sweep_python_envs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="procfs")

# A fake tritonserver loading its models: its python backend's directory made, no handler for SIGTERM yet.
FAKE_SERVER = """
import os, sys, threading
os.mkdir(sys.argv[1])
print("loading", flush=True)
threading.Event().wait()
"""


def test_a_server_stopped_while_it_loaded_leaves_no_python_backend_directory(tmp_path, monkeypatch):
    made = tmp_path / f"{ENV_PREFIX}AbC123"
    launched = time.time() - 1.0
    proc = subprocess.Popen(
        [sys.executable, "-c", FAKE_SERVER, str(made)], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert proc.stdout.readline().strip() == b"loading"
        server = triton_server.TritonServer(tmp_path / "repo", tmp_path / "work", http_port=0)
        server.process, server._launched_at = proc, launched
        monkeypatch.setattr(
            triton_server, "sweep_python_envs", lambda since: sweep_python_envs(since, tmp_path)
        )
        monkeypatch.setattr(shm_regions, "tritonserver_starts", lambda: [])  # xdist's other Tritons
        server.stop(grace_s=5)
    finally:
        proc.kill()
        proc.wait()
    assert not made.exists()


def test_a_python_backend_directory_in_use_or_older_than_the_launch_stays(tmp_path):
    older, used = tmp_path / f"{ENV_PREFIX}older", tmp_path / f"{ENV_PREFIX}used"
    launched = time.time()
    older.mkdir()
    used.mkdir()
    (used / "env.tar.gz").write_bytes(b"")
    os.utime(older, (launched - 5, launched - 5))
    os.utime(used, (launched + 1, launched + 1))
    assert sweep_python_envs(launched, tmp_path) == []
    assert older.is_dir() and used.is_dir()


def test_nothing_is_swept_while_a_tritonserver_started_since_the_launch_runs(tmp_path):
    """Its own directory may be among those made since the launch, empty until a model unpacks an
    ``EXECUTION_ENV_PATH`` there; a server started before the launch made its own before."""
    made = tmp_path / f"{ENV_PREFIX}theirs"
    made.mkdir()
    fake = tmp_path / "tritonserver"  # what procfs names the process: its executable's name
    shutil.copy(shutil.which("sleep") or "/bin/sleep", fake)
    launched = time.time() - 60
    other = subprocess.Popen([str(fake), "60"])
    try:
        assert sweep_python_envs(launched, tmp_path) == []
        assert made.is_dir()
        assert sweep_python_envs(time.time() + 5, tmp_path) == []  # ``made`` older than that launch
        os.utime(made, (time.time() + 10, time.time() + 10))
        # made after the launch, but ``other`` started before it: may be its own, made as it loaded
        assert sweep_python_envs(time.time() + 5, tmp_path) == []
    finally:
        other.kill()
        other.wait()
