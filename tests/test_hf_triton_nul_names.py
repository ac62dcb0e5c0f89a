"""A model name holding a NUL, through the ``triton`` backend: Triton reads a name as a C string, so
``GET /v2/models/double%00x/ready`` was answered 200 (Triton said ``double`` was ready) and gRPC
ModelReady ``ready: true``, for a name every other route answered 404; and each request for such a
name made the backend fetch Triton's index again at once (Triton having said it was ready), past
``resync_interval_s``: two calls to Triton per request a client made up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from serving.errors import ModelNotFound
from serving.execution.triton import TritonBackend
from tests.test_grpc import LoopThread
from tests.test_oldcode_m_triton_ready import _Triton

READY = [{"name": "double", "version": "1", "state": "READY"}]
NAMES = ["double\x00", "double\x00x", "double\x00/../idle"]


class _CStringTriton(_Triton):
    """Triton's answers (no Triton needed), each name read as Triton's C++ server reads it: up to a NUL;
    counts its index fetches and the names it was asked the readiness of."""

    def __init__(self, index: list[dict]) -> None:
        super().__init__(index)
        self.index_calls, self.asked = 0, []

    async def get_model_repository_index(self) -> list[dict]:
        self.index_calls += 1
        return await super().get_model_repository_index()

    async def is_model_ready(self, name: str, version: str = "") -> bool:
        self.asked.append(name)
        return await super().is_model_ready(name.partition("\x00")[0], version)


@pytest.fixture
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


def _backend(fake: _CStringTriton) -> TritonBackend:
    backend = TritonBackend("127.0.0.1:1", protocol="http", resync_interval_s=3600)  # no check due
    backend._client = fake
    return backend


@pytest.mark.parametrize("name", NAMES)
def test_the_readiness_of_a_name_with_a_nul_is_unknown_not_the_models_named_before_it(loop, name) -> None:
    fake = _CStringTriton(READY)
    backend = _backend(fake)
    loop.run(backend.start())
    try:
        assert loop.run(backend.model_ready("double")) is True
        with pytest.raises(ModelNotFound, match=r"unknown model 'double\\x00.*'; Triton serves \['double'\]"):
            loop.run(backend.model_ready(name))
        assert fake.asked == ["double"]  # never asked: Triton would answer for "double"
    finally:
        loop.run(backend.stop())


def test_requests_for_a_name_with_a_nul_get_404_everywhere_and_cost_triton_nothing(tmp_path) -> None:
    from serving.app import create_app
    from serving.settings import Settings

    fake = _CStringTriton(READY)
    settings = Settings(model_repository=tmp_path, backend="triton", grpc_port=0)
    with TestClient(create_app(settings, backend=_backend(fake))) as client:
        assert client.get("/v2/models/double/ready").status_code == 200
        fetched = fake.index_calls
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
        for _ in range(3):
            answer = client.get("/v2/models/double%00x/ready")
            assert answer.status_code == 404, answer.text
            assert answer.json() == {"error": "unknown model 'double\\x00x'; Triton serves ['double']"}
            answer = client.post("/v2/models/double%00x/infer", json=body)
            assert answer.status_code == 404, answer.text
        assert fake.index_calls == fetched  # no index fetched again for a name Triton cannot serve
        assert all("\x00" not in name for name in fake.asked), fake.asked
