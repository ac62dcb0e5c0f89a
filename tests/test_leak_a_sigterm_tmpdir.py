"""What a gateway stopped by SIGTERM (``docker stop``, Kubernetes, systemd) leaves in its TMPDIR: nothing.

uvicorn raises the SIGTERM it caught again after the drain, so that the process ends by that signal; by
the signal's default action the interpreter's exit handlers never ran, and multiprocessing's temporary
directory (``pymp-*``, holding the JSON helper's forkserver socket) stayed behind at every stop, one per
worker: ~120 of them in a /tmp after a day of test runs and restarts."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.repo_fixtures import build_classifier_repository
from tests.test_gateway_lifecycle import BODY, _start_on_free_ports, stop_gateway


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return build_classifier_repository(tmp_path_factory.mktemp("leak-a") / "repo")


def test_a_gateway_of_two_workers_stopped_by_sigterm_after_their_json_helpers_ran_leaves_its_tmpdir_empty(
    repository, tmp_path, short_tmpdir
):
    """One process: ``tests/test_json_helper_stop.py``."""
    tmp = short_tmpdir
    flags = ("--json-offload-bytes", "100", "--workers", "2")  # every JSON body parsed in the helper
    log = tmp_path / "gateway.log"
    proc, http = _start_on_free_ports(repository, flags, log, env={**os.environ, "TMPDIR": str(tmp)})
    try:
        assert proc.poll() is None, log.read_text()
        answer = httpx.post(f"http://127.0.0.1:{http}/v2/models/lenet/infer", content=BODY, timeout=30)
        assert answer.status_code == 200, answer.text
        assert list(tmp.glob("pymp-*")), "the JSON helper did not start: nothing to test"
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=60)
    finally:
        stop_gateway(proc)
    assert status == 0, log.read_text()  # README, "Serving": the parent exits 0 once its workers stopped
    left = sorted(p.name for p in tmp.iterdir() if p.name != ".ses")  # ONNX Runtime's own, one, reused
    assert left == [], f"{left} left in TMPDIR:\n{log.read_text()}"
