"""``--workers`` as a process: what a gateway of several workers accepts on its command line."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import httpx

from tests.test_workers import _children, _held_port
from tests.waiting import eventually


def test_several_workers_serve_http_alone_with_grpc_port_0(tmp_path: Path) -> None:
    """``--grpc-port 0`` is no gRPC server (its flag's help), not a port each worker would draw: a
    gateway of several workers serving HTTP alone was refused with "--workers > 1 needs fixed
    --http-port and --grpc-port (not 0)" before it started."""
    from kiln.processes import running
    from tests.repo_fixtures import SIZE, build_classifier_repository

    repository = build_classifier_repository(tmp_path / "repo")
    held = _held_port()  # SO_REUSEPORT, not listening: the workers bind beside it (--reuse-port)
    port = held.getsockname()[1]
    cmd = [sys.executable, "-m", "serving", "--model-repository", str(repository), "--host", "127.0.0.1"]
    cmd += ["--http-port", str(port), "--grpc-port", "0", "--workers", "2", "--reuse-port"]
    image = [{"name": "images", "datatype": "UINT8", "shape": [1, SIZE, SIZE, 1], "data": [1] * SIZE * SIZE}]
    url = f"http://127.0.0.1:{port}"
    try:
        with running(cmd, f"{url}/v2/health/ready", log_path=tmp_path / "gateway.log") as gateway:
            assert eventually(lambda: len(_children(gateway.pid)) == 2)
            answer = httpx.post(f"{url}/v2/models/lenet/infer", json={"inputs": image}, timeout=30)
            assert answer.status_code == 200, answer.text
            gateway.send_signal(signal.SIGTERM)
            assert gateway.wait(timeout=30) == 0, (tmp_path / "gateway.log").read_text()
    finally:
        held.close()
