"""A model's readiness through ``--backend triton`` while Triton is down or hung says why: the server's
readiness named the outage, the model's (``GET /v2/models/{name}/ready``, what KServe and load
balancers probe per model) said only "model 'x' is not ready", as if the model itself had failed."""

from __future__ import annotations

import json

from serving.errors import DeadlineExceeded, Unavailable
from serving.execution.base import ModelMetadata
from serving.execution.triton import TritonBackend
from serving.gateway import Gateway
from serving.protocol.v2 import model_ready

DOWN = "Triton at 127.0.0.1:1 is unavailable: connection refused"
HUNG = "Triton did not answer is_model_ready within 2s"
INDEX = [
    {"name": "double", "version": "1", "state": "READY"},
    {"name": "spare", "version": "", "state": "", "reason": ""},  # listed, never loaded (explicit mode)
]


def _backend(state: list[str]) -> TritonBackend:
    """A Triton backend whose calls find Triton ``up``, ``down`` (refused) or ``hung`` (no answer)."""
    backend = TritonBackend("127.0.0.1:1", protocol="http", timeout_s=5)

    async def call(method: str, *args: object, **kwargs: object) -> object:
        if state[0] == "down":
            raise Unavailable(DOWN)
        if state[0] == "hung":
            raise DeadlineExceeded(HUNG)
        if method == "get_model_repository_index":
            return INDEX
        if method == "is_model_ready":
            return args[0] == "double"
        raise AssertionError(f"unexpected call {method}")

    backend._call = call  # type: ignore[method-assign]
    backend._fetch_metadata = _metadata  # type: ignore[method-assign]
    backend._fetch_config = _config  # type: ignore[method-assign]
    return backend


async def _metadata(name: str) -> ModelMetadata:
    return ModelMetadata(name, ["1"], "python", [], [])


async def _config(name: str) -> dict:
    return {"name": name}


def _answer(loop, gateway: Gateway, name: str) -> tuple[int, str]:  # noqa: ANN001
    answer = loop.run(model_ready(name, gateway, ""))
    return answer.status_code, json.loads(answer.body)["error"] if answer.body else ""


def test_a_models_readiness_names_an_unreachable_or_hung_triton_and_its_index_reason_once_back(loop) -> None:
    state = ["up"]
    gateway = Gateway(_backend(state), None)
    loop.run(gateway.backend._sync(force=True))
    assert _answer(loop, gateway, "double") == (200, "")
    assert _answer(loop, gateway, "spare") == (400, "model 'spare' is not ready: not loaded")
    state[0] = "down"
    assert _answer(loop, gateway, "double") == (400, f"model 'double' is not ready: {DOWN}")
    state[0] = "hung"
    assert _answer(loop, gateway, "double") == (400, f"model 'double' is not ready: {HUNG}")
    state[0] = "up"  # reached again: the index's reasons again, not the outage
    assert _answer(loop, gateway, "double") == (200, "")
    assert _answer(loop, gateway, "spare") == (400, "model 'spare' is not ready: not loaded")
