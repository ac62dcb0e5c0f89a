"""A gateway over a real Triton in explicit model-control mode: the models Triton lists but never
loaded are no load failures. Once a load failed (Triton then not ready), the readiness answer said
"model 'broken' failed to load: not loaded; model 'idle' failed to load: not loaded; ...": every
model never asked for named as a failure, and the one that failed without its error, read from the
index fetched before that load (a not-ready Triton's index was not read again)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serving.execution.triton import TritonBackend
from serving.gateway import Gateway
from serving.protocol.health import ready
from serving.protocol.v2 import model_ready
from tests.test_grpc import LoopThread
from tests.test_triton_backend_faults import explicit  # noqa: F401 (the module's explicit-mode Triton)

pytestmark = pytest.mark.triton


@pytest.fixture
def gateway(explicit, loop: LoopThread) -> Iterator[Gateway]:  # noqa: F811
    backend = TritonBackend(explicit.grpc_url, timeout_s=30, resync_interval_s=0)
    loop.run(backend.start())
    yield Gateway(backend, None)
    loop.run(backend.stop())


def _error(answer) -> str:  # noqa: ANN001
    assert answer.status_code == 400
    return json.loads(answer.body)["error"]


def test_models_never_loaded_are_not_named_failed_and_a_failed_load_gives_its_error(
    explicit,  # noqa: F811
    gateway: Gateway,
    loop: LoopThread,
) -> None:
    assert loop.run(ready(gateway)).status_code == 200  # explicit mode: idle, later, broken not loaded
    assert gateway.load_error("idle") == ""  # never asked for: no failure
    assert _error(loop.run(model_ready("idle", gateway, ""))) == "model 'idle' is not ready: not loaded"
    with (
        httpclient.InferenceServerClient(explicit.http_url) as triton,
        pytest.raises(InferenceServerException, match="fails to load on purpose"),
    ):
        triton.load_model("broken")
    reason = _error(loop.run(ready(gateway)))  # Triton is not ready now: a load failed
    assert reason.startswith("server is not ready: model 'broken' failed to load: UNAVAILABLE: ")
    assert "fails to load on purpose" in reason  # its error, not the "not loaded" of before its load
    assert "idle" not in reason and "later" not in reason, reason
    assert "fails to load on purpose" in gateway.load_error("broken")
    assert _error(loop.run(model_ready("idle", gateway, ""))) == "model 'idle' is not ready: not loaded"
