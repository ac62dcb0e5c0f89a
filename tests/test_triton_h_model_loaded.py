"""The ``triton`` backend in front of a real Triton (``--model-control-mode explicit``) that loads a model
after the gateway last read its index: the model is served as soon as Triton says it is ready, not
once the next index check (``resync_interval_s`` later) has found it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import tritonclient.http as httpclient

from serving.execution.triton import TritonBackend
from serving.triton import TritonServer
from tests.test_grpc import LoopThread
from tests.test_triton_backend_faults import DOUBLE, doubled, explicit_triton

pytestmark = pytest.mark.triton
LATER = ("asked_ready", "asked_straight")  # models Triton does not load at start, one a test


@pytest.fixture(scope="module")
def explicit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with explicit_triton(tmp_path_factory, "loaded", dict.fromkeys(("double", *LATER), DOUBLE)) as server:
        yield server


@pytest.fixture
def backend(explicit: TritonServer, loop: LoopThread) -> Iterator[TritonBackend]:
    """A backend whose index check is not due during the test (as after a load balancer's probe)."""
    backend = TritonBackend(explicit.grpc_url, timeout_s=30, resync_interval_s=3600)
    loop.run(backend.start())
    yield backend
    loop.run(backend.stop())


def test_a_model_triton_loaded_is_served_once_the_ready_route_says_so(explicit, backend, loop) -> None:
    """The ready route asked Triton (ready) while metadata and requests read the model list, fetched
    before the load: a client that waited for readiness got a 404 "not loaded"."""
    assert backend.unready_reason("asked_ready") == "not loaded"  # listed, never loaded (no failure)
    with httpclient.InferenceServerClient(explicit.http_url) as triton:
        triton.load_model("asked_ready")
    assert loop.run(backend.model_ready("asked_ready"))
    assert [t.name for t in backend.metadata("asked_ready").inputs] == ["x"]
    assert doubled(loop, backend, "asked_ready") == [[2.0, 4.0]]


def test_a_model_triton_loaded_is_served_to_a_request_that_did_not_ask_readiness(
    explicit, backend, loop
) -> None:
    """tritonclient's load_model returns once the model is ready; the request that follows it was a
    404 naming the model "not loaded" until the next index check."""
    with httpclient.InferenceServerClient(explicit.http_url) as triton:
        triton.load_model("asked_straight")
    assert doubled(loop, backend, "asked_straight") == [[2.0, 4.0]]
    assert backend.load_error("asked_straight") == ""
