"""What a stopped or killed gateway leaves behind and prints, found by stopping real ``python -m serving``
processes: each binds port 0 and is read its port from its start-up line."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.repo_fixtures import SIZE, build_classifier_repository
from tests.test_gateway_lifecycle import group_members as _group
from tests.test_gateway_lifecycle import stop_gateway
from tests.waiting import eventually

RUNNING = re.compile(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)")
BODY = {
    "inputs": [
        {
            "name": "images",
            "datatype": "UINT8",
            "shape": [1, SIZE, SIZE, 1],
            "data": np.zeros(SIZE * SIZE, np.uint8).tolist(),
        }
    ]
}


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return build_classifier_repository(tmp_path_factory.mktemp("shutdown") / "repo")


@contextmanager
def _gateway(repository: Path, log: Path, *flags: str) -> Iterator[tuple[subprocess.Popen, int]]:
    """``python -m serving`` on port 0 (no gRPC) in a session of its own, and the HTTP port its start-up
    line names; stopped with all it started on the way out, whatever the test did. Its TMPDIR is the
    test's own, removed after: a gateway killed here leaves multiprocessing's ``pymp-*`` directory (its
    JSON helper's forkserver socket), which went to /tmp at every run; and a short one, that socket's
    path at most 107 bytes (pytest's ``tmp_path`` under xdist can be longer: no helper starts there)."""
    cmd = [sys.executable, "-m", "serving", "--model-repository", str(repository), "--host", "127.0.0.1"]
    cmd += ["--http-port", "0", "--grpc-port", "0", "--log-level", "info", *flags]
    tmp = tempfile.mkdtemp(prefix="kiln-t-", dir="/tmp" if os.path.isdir("/tmp") else None)
    env = {**os.environ, "TMPDIR": tmp}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        if not eventually(lambda: proc.poll() is not None or RUNNING.search(log.read_bytes()), 60):
            pytest.fail(f"the gateway did not start within 60 s:\n{log.read_text()}")
        started = RUNNING.search(log.read_bytes())
        assert started and proc.poll() is None, log.read_text()
        yield proc, int(started.group(1))
    finally:
        stop_gateway(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def _start_helper(port: int, client: httpx.Client | None = None) -> None:
    """A body over ``--json-offload-bytes``: the gateway starts its JSON helper process for it."""
    post = httpx.post if client is None else client.post
    answer = post(f"http://127.0.0.1:{port}/v2/models/lenet/infer", json=BODY, timeout=60)
    assert answer.status_code == 200, answer.text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process table in /proc")
def test_a_gateway_killed_after_a_large_json_body_leaves_no_helper_process_running(repository, tmp_path):
    """SIGKILL (the OOM killer, a worker of several, Kubernetes past its grace) skips the app's stop: the
    JSON helper, blocked on a queue it holds both ends of, ran on for ever, and kept its forkserver and
    the resource tracker alive (with the semaphores the tracker never got to unlink)."""
    log = tmp_path / "gateway.log"
    with _gateway(repository, log, "--json-offload-bytes", "64") as (proc, port):
        _start_helper(port)
        assert len(_group(proc.pid)) >= 3, log.read_text()  # the gateway, its forkserver and helper
        proc.kill()
        proc.wait()
        assert eventually(lambda: not _group(proc.pid), 30), (_group(proc.pid), log.read_text())


def test_ctrl_c_after_a_large_json_body_drains_without_the_helper_s_traceback(repository, tmp_path):
    """A terminal's Ctrl-C reaches the whole process group: the JSON helper died of KeyboardInterrupt
    and printed its traceback into the gateway's log while the gateway drained and exited 0."""
    log = tmp_path / "gateway.log"
    with _gateway(repository, log, "--json-offload-bytes", "64") as (proc, port):
        _start_helper(port)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0, log.read_text()
        assert eventually(lambda: not _group(proc.pid), 30), log.read_text()
    text = log.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert text.rstrip().splitlines()[-1].endswith(f"Finished server process [{proc.pid}]"), text


def _helpers(pgid: int) -> list[int]:
    """The JSON helper processes of group ``pgid``: the forkserver's children."""
    group = set(_group(pgid))
    helpers = []
    for pid in group:
        with suppress(OSError):
            parent = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
            if parent in group and b"forkserver" in Path(f"/proc/{parent}/cmdline").read_bytes():
                helpers.append(pid)
    return helpers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process table in /proc")
def test_a_gateway_whose_json_helper_died_stops_without_leaking_its_semaphores(repository, tmp_path):
    """The pool of a helper that died (the OOM killer) was dropped, not shut down, and stayed reachable:
    its queues' named semaphores outlived the stop, which ends by the signal (no exit handlers), and the
    resource tracker warned of "5 leaked semaphore objects" after every such gateway's stop."""
    log = tmp_path / "gateway.log"
    with _gateway(repository, log, "--json-offload-bytes", "64") as (proc, port):
        with httpx.Client() as client:  # two bodies on one connection: one alone left nothing behind
            _start_helper(port, client)
            _start_helper(port, client)
        helpers = _helpers(proc.pid)
        assert len(helpers) == 1, log.read_text()
        os.kill(helpers[0], signal.SIGKILL)
        _start_helper(port)  # parsed in place, or by a new helper
        assert "the JSON parse process died" in log.read_text()
        _start_helper(port)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        assert eventually(lambda: not _group(proc.pid), 30), log.read_text()
    assert "leaked semaphore" not in log.read_text(), log.read_text()
