"""The gateway app's lifespan: what a start-up step that fails leaves behind (nothing), what it says (one
line naming the step), and a shutdown step that fails (the later ones still run)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.repository import Repository
from serving.lifespan import LifespanFailed
from serving.settings import Settings
from tests.repo_fixtures import build_classifier_repository


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return build_classifier_repository(tmp_path_factory.mktemp("lifespan") / "repo")


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another server listens on (no SO_REUSEPORT): the gateway's gRPC server cannot bind it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


class Recorded:
    """An ONNX Runtime backend that records its stop (and can be told to fail its start or its stop)."""

    def __init__(self, repository: Path, *, fail_start: bool = False, fail_stop: bool = False) -> None:
        self.inner = OnnxRuntimeBackend(Repository(repository))
        self.fail_start, self.fail_stop = fail_start, fail_stop
        self.stopped = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def start(self) -> None:
        await self.inner.start()  # its models loaded: something to stop
        if self.fail_start:
            raise RuntimeError("the backend broke while starting")

    async def stop(self) -> None:
        await self.inner.stop()
        self.stopped.set()
        if self.fail_stop:
            raise RuntimeError("the backend broke while stopping")


def _start_and_stop(app: Any) -> None:
    """Run the app's lifespan: start-up, then shutdown (TestClient raises what either raised)."""
    with TestClient(app):
        pass


def _batch_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("kiln-batch-")]


def test_a_grpc_port_taken_at_start_up_stops_the_started_backend_and_says_so_in_one_line(
    repository, busy_port
):
    backend = Recorded(repository)
    settings = Settings(model_repository=repository, grpc_port=busy_port)
    before = _batch_threads()
    with pytest.raises(LifespanFailed) as raised:
        _start_and_stop(create_app(settings, backend=backend))
    assert backend.stopped.is_set()
    assert _batch_threads() == before  # the backend's batch threads ended with it
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"gateway start-up failed: the gRPC server (--grpc-port {busy_port}): ")
    assert "address already in use" in message


def test_uvicorn_logs_a_failed_start_up_as_one_line_without_a_traceback(repository, busy_port):
    from uvicorn import Config
    from uvicorn.lifespan.on import LifespanOn

    lifespan = LifespanOn(Config(create_app(Settings(model_repository=repository, grpc_port=busy_port))))
    lines: list[str] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    try:
        asyncio.run(lifespan.startup())
    finally:
        logger.removeHandler(handler)
    assert lifespan.should_exit
    assert lines[0].startswith("gateway start-up failed: the gRPC server") and "\n" not in lines[0], lines
    assert lines[1:] == ["Application startup failed. Exiting."]


def test_a_backend_failing_its_start_is_stopped_and_named(repository):
    backend = Recorded(repository, fail_start=True)
    settings = Settings(model_repository=repository, grpc_port=0)
    with pytest.raises(LifespanFailed) as raised:
        _start_and_stop(create_app(settings, backend=backend))
    assert backend.stopped.is_set()
    assert str(raised.value) == "gateway start-up failed: the backend: the backend broke while starting"


def test_a_repository_with_a_broken_entry_starts_and_reports_that_model_not_ready(repository, tmp_path):
    broken = tmp_path / "repo"
    broken.mkdir()
    (broken / "lenet").symlink_to(repository / "lenet")
    (broken / "bad").mkdir()
    (broken / "bad" / "config.pbtxt").write_text("this is { not a config")
    with TestClient(create_app(Settings(model_repository=broken, grpc_port=0))) as client:
        assert client.get("/v2/models/lenet/ready").status_code == 200
        assert client.get("/v2/models/bad/ready").status_code != 200
        assert client.get("/v2/health/live").status_code == 200


def test_a_shutdown_step_that_fails_does_not_skip_the_later_ones(repository):
    backend = Recorded(repository, fail_stop=True)
    app = create_app(Settings(model_repository=repository, grpc_port=0), backend=backend)
    closed = threading.Event()
    close = app.state.json_offload.close
    app.state.json_offload.close = lambda: (close(), closed.set())  # stopped after the backend
    with pytest.raises(LifespanFailed, match="the backend broke while stopping"):
        _start_and_stop(app)
    assert backend.stopped.is_set() and closed.is_set()
