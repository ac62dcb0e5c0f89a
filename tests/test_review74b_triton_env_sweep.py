"""The python backend's directory a *running* tritonserver made stays when a Kiln Triton stops: the
backend makes ``/tmp/python_env_XXXXXX`` when its first python model loads (seconds after the server's
start, hours under explicit model control), so a server started before a Kiln launch may make its own
after it; the stop's sweep removed that live server's empty directory, and the server then died by
SIGABRT when it stopped (``fts_read error: ... No such file or directory``; reproduced with Triton's own
python backend)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from serving.triton import shm_regions
from serving.triton.shm_regions import ENV_PREFIX, sweep_python_envs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="procfs")


def test_a_directory_a_tritonserver_started_before_the_launch_made_after_it_stays(tmp_path):
    fake = tmp_path / "tritonserver"  # what procfs names the process: its executable's name
    shutil.copy(shutil.which("sleep") or "/bin/sleep", fake)
    other = subprocess.Popen([str(fake), "60"])  # a server loading since before the launch
    try:
        launched = time.time() + 5
        theirs = tmp_path / f"{ENV_PREFIX}theirs"
        theirs.mkdir()
        made = launched + 5  # made once its first python model loaded, after the launch
        os.utime(theirs, (made, made))
        assert sweep_python_envs(launched, tmp_path) == []
        assert theirs.is_dir()
    finally:
        other.kill()
        other.wait()


def test_a_directory_made_before_every_running_tritonserver_started_is_swept(tmp_path, monkeypatch):
    """No live server can have made it: what a server stopped while it loaded left."""
    left = tmp_path / f"{ENV_PREFIX}left"
    left.mkdir()
    made = time.time() - 30
    os.utime(left, (made, made))
    monkeypatch.setattr(shm_regions, "tritonserver_starts", lambda: [made + 10])
    assert sweep_python_envs(made - 1, tmp_path) == [left.name]
    assert not left.exists()
