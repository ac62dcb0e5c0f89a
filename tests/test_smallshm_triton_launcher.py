"""``python -m serving.triton`` where /dev/shm is too small for Triton's python backend (a container run
without ``--shm-size``, 1 MiB, or a full one): Triton's own words were in a model's row of its status
table, tens of lines above the ``failed to load all models`` the launcher ended on. The launcher's error
now ends with one line naming /dev/shm and what to do."""

from __future__ import annotations

import subprocess
import sys

import pytest

from serving.triton.server import TritonError, TritonServer

ROW = (
    "| resnet18            | 1       | UNAVAILABLE: Internal: Unable to initialize shared memory key "
    "'triton_python_backend_shm_region_7c233e7d-dbfe-4fd3-9ed0-6e9f5a7b330e' to requested size "
    "(1048576 bytes). If you are running Triton inside docker, use '--shm-size' flag to control the shared "
    "memory region size. Each Python backend model instance requires at least 1 MB of shared memory. "
    "Error: No space left on device |"
)


def _exited_server(tmp_path, log: str) -> TritonServer:
    server = TritonServer(tmp_path / "repo", tmp_path)
    server.log_path.write_text(log)
    server.process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    server.process.wait()
    return server


def test_a_server_that_found_no_room_in_dev_shm_ends_its_error_naming_dev_shm_and_shm_size(tmp_path):
    log = "\n".join([ROW, *(["I1207 server.cc:345] Timeout 5"] * 60), "error: creating server: failed"])
    with pytest.raises(TritonError) as failed:
        _exited_server(tmp_path, log).wait_ready()
    last = str(failed.value).splitlines()[-1]
    assert last.startswith("/dev/shm (") and "--shm-size" in last and "python backend" in last


def test_a_server_that_failed_for_another_reason_says_nothing_of_dev_shm(tmp_path):
    with pytest.raises(TritonError) as failed:
        _exited_server(tmp_path, "error: creating server: failed to load all models\n").wait_ready()
    assert "/dev/shm" not in str(failed.value)
