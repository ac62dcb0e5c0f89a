"""The ``triton`` backend's model readiness answers an unknown model as the embedded backend does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from serving.errors import ModelNotFound
from serving.execution.triton import TritonBackend
from tests.test_grpc import LoopThread
from tests.test_triton_backend_faults import _Index


class _Triton(_Index):
    """Triton's answers over HTTP (no Triton needed): its index, and ``ready`` for the models it serves;
    an unknown model is "not ready", as Triton answers it."""

    async def is_server_ready(self) -> bool:
        return True

    async def is_model_ready(self, name: str, version: str = "") -> bool:
        return any(m["name"] == name and m.get("state") == "READY" for m in self.index)


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


def test_the_readiness_of_a_model_triton_does_not_list_is_a_404_and_of_one_it_lists_not_ready(loop) -> None:
    """``GET /v2/models/nope/ready`` was a 400 "model 'nope' is not ready" through the triton backend,
    where the embedded backend answers 404 "unknown model" (and the metadata, config and statistics of
    that name are 404 through both)."""
    fake = _Triton([{"name": "double", "version": "1", "state": "READY"}, {"name": "idle"}])
    backend = TritonBackend("127.0.0.1:1", protocol="http", resync_interval_s=0)
    backend._client = fake
    loop.run(backend.start())
    try:
        assert loop.run(backend.model_ready("double")) is True
        assert loop.run(backend.model_ready("idle")) is False  # listed, not loaded: not ready (400)
        with pytest.raises(ModelNotFound, match="unknown model 'nope'; Triton serves \\['double'\\]"):
            loop.run(backend.model_ready("nope"))
        fake.index.append({"name": "nope"})  # in Triton's repository since the list was fetched
        assert loop.run(backend.model_ready("nope")) is False
    finally:
        loop.run(backend.stop())


def _gateway_before_triton(repository):
    """A test client of a gateway on ``repository`` whose Triton backend serves ``double`` alone."""
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import Settings

    backend = TritonBackend("127.0.0.1:1", protocol="http", resync_interval_s=0)
    backend._client = _Triton([{"name": "double", "version": "1", "state": "READY"}])
    settings = Settings(model_repository=repository, backend="triton", grpc_port=0)
    return TestClient(create_app(settings, backend=backend))


def test_the_ready_route_through_the_triton_backend_answers_an_unknown_model_404(tmp_path) -> None:
    with _gateway_before_triton(tmp_path) as client:
        answer = client.get("/v2/models/nope/ready")
        assert answer.status_code == 404, answer.text
        assert answer.json() == {"error": "unknown model 'nope'; Triton serves ['double']"}
        assert client.get("/v2/models/double/ready").status_code == 200


def test_the_model_list_through_the_triton_backend_lists_an_entry_triton_lacks_as_not_ready(tmp_path) -> None:
    """``GET /v1/models`` asks the backend whether each entry of the gateway's repository is ready: one
    the Triton behind does not serve is listed not ready, not a 404 for the whole list."""
    from tests.repo_fixtures import build_classifier_repository

    repository = build_classifier_repository(tmp_path / "repo")  # lenet, which this Triton lacks
    with _gateway_before_triton(repository) as client:
        answer = client.get("/v1/models")
        assert answer.status_code == 200, answer.text
        assert {model["name"]: model["ready"] for model in answer.json()} == {"lenet": False}
