"""A gateway over ``--backend triton`` whose Triton cannot be reached says so in its readiness answer:
the answer that names models that failed to load (health.not_ready_reason) read Triton's model index
as fetched before the outage, and blamed the models Triton listed without loading them
(``--model-control-mode explicit``: "model 'spare' failed to load: not loaded") for a Triton that was
down."""

from __future__ import annotations

import json

from serving.errors import Unavailable
from serving.execution.triton import TritonBackend
from serving.gateway import Gateway
from serving.protocol.health import ready

DOWN = "Triton at 127.0.0.1:1 is unavailable: connection refused"
INDEX = [
    {"name": "spare", "version": "", "state": "", "reason": ""},  # listed, never loaded (explicit mode)
    {"name": "broken", "version": "1", "state": "UNAVAILABLE", "reason": "failed to load: bad graph"},
]


def _backend(up: list[bool]) -> TritonBackend:
    backend = TritonBackend("127.0.0.1:1", protocol="http", timeout_s=5)

    async def call(method: str, *args: object, **kwargs: object) -> object:
        if not up[0]:
            raise Unavailable(DOWN)
        if method == "get_model_repository_index":
            return INDEX
        return method != "is_server_ready"  # reached, not ready (strict readiness: a model failed)

    backend._call = call  # type: ignore[method-assign]
    return backend


def _reason(loop, gateway: Gateway) -> str:  # noqa: ANN001
    answer = loop.run(ready(gateway))
    assert answer.status_code == 400
    return json.loads(answer.body)["error"]


def test_an_unreachable_triton_is_the_reason_not_its_stale_model_index(loop) -> None:
    up = [True]
    gateway = Gateway(_backend(up), None)
    loop.run(gateway.backend._sync(force=True))
    # reached but not ready: its index names the model that failed
    assert "model 'broken' failed to load: UNAVAILABLE: failed to load: bad graph" in _reason(loop, gateway)
    up[0] = False
    assert _reason(loop, gateway) == f"server is not ready: {DOWN}"
    up[0] = True  # reached again: the index's reasons again
    assert "model 'broken' failed to load" in _reason(loop, gateway)
