"""A stop signal in the first moments of a gateway's start-up, before its backend is made (the
repository still being read, the backend's modules imported): the start-up stops before the first
model loads, as it does for a signal that comes while the models load."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
import uvicorn

from serving.app import GatewayServer, create_app
from serving.execution.base import LoadingStopped
from serving.lifespan import LifespanFailed
from serving.settings import Settings
from tests.repo_fixtures import build_classifier_repository


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return build_classifier_repository(tmp_path_factory.mktemp("early_stop") / "repo")


async def _start_up(app) -> None:
    """Run the app's lifespan as uvicorn does; it must not get as far as serving."""
    async with app.router.lifespan_context(app):
        pytest.fail("the gateway started serving after a stop signal")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_before_the_backend_is_made_loads_no_model(repository, sig):
    """It loaded every model, opened the ports, then drained: a rollout cancelled at once still
    waited for the whole load (minutes for large models) before the pod went."""
    app = create_app(Settings(model_repository=repository, http_port=0, grpc_port=0))
    server = GatewayServer(uvicorn.Config(app))
    server.handle_exit(sig, None)  # uvicorn's signal handler, before the lifespan made the backend
    with pytest.raises(LifespanFailed) as stopped:
        asyncio.run(_start_up(app))
    assert isinstance(stopped.value.__cause__, LoadingStopped), stopped.value
    assert "not loaded: lenet" in str(stopped.value.__cause__)
    assert server.stopped_loading_by == sig  # python -m serving ends as a stop ends, not as a failed start
