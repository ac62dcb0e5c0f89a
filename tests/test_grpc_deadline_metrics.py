"""A gRPC call whose deadline passes is counted in ``kiln_request_failures_total`` as a deadline (504),
as HTTP counts its own and as the client sees it (DEADLINE_EXCEEDED), on either gRPC server: Kiln's
cancelled it at the deadline and it was counted 499 (a client gone), grpcio's by its backend's own limit
(504) unless grpc core's cancellation came first (499 again)."""

from __future__ import annotations

import asyncio

import hpack
import numpy as np
import pytest

from serving.errors import DeadlineExceeded
from serving.execution.base import InferRequest, InferResponse
from serving.metrics import DEADLINE_SLACK_S, GatewayMetrics, observed
from serving.protocol import h2_wire as w
from serving.protocol.grpc_server import start_grpc_server
from tests.h2_client import RawClient, call_end, call_headers, doubling_request, grpc_message
from tests.test_grpc import FakeBackend, LoopThread
from tests.waiting import eventually

DEADLINE_EXCEEDED = "4"


class BoundedBackend(FakeBackend):
    """``double`` works until its time limit runs out, then fails as the gateway's backends fail there
    (the batcher's DeadlineExceeded); FakeBackend's ``hang`` never answers, whatever its limit."""

    async def infer(self, request: InferRequest) -> InferResponse:
        if request.model != "double":
            return await super().infer(request)
        limit = request.time_limit(None)
        try:
            await asyncio.wait_for(asyncio.Event().wait(), limit)
        except TimeoutError:
            raise DeadlineExceeded(f"model 'double': request timed out after {limit:g} s") from None
        raise AssertionError("unreachable: nothing sets the event")


def _failures(metrics: GatewayMetrics, model: str) -> dict[str, float]:
    """The model's failed calls by the status they were counted with (none: absent)."""
    found = {
        status: metrics.sample("kiln_request_failures_total", model=model, status=status)
        for status in ("499", "504")
    }
    return {status: count for status, count in found.items() if count}


@pytest.mark.parametrize("model", ["double", "hang"])
@pytest.mark.parametrize("server", ["kiln", "grpcio"])
def test_a_call_whose_deadline_passes_is_counted_504_on_either_grpc_server(
    loop: LoopThread, server: str, model: str
) -> None:
    """A raw client that keeps no deadline of its own (no reset of its own to race the server's end):
    the server ends the call at its ``grpc-timeout``, whether the backend bounds its work by it
    (``double``) or not (``hang``)."""
    metrics = GatewayMetrics()
    handle = loop.run(start_grpc_server(BoundedBackend(), "127.0.0.1", 0, server=server, metrics=metrics))
    client = RawClient(handle.port)
    try:
        headers = [(":authority", "kiln"), *call_headers(te="trailers", grpc_timeout="50m")]
        request = doubling_request(np.ones((1, 3), np.float32), model=model)
        client.send(
            w.PREFACE,
            w.settings_frame({}),
            w.frame(w.HEADERS, w.END_HEADERS, 1, hpack.Encoder().encode(headers)),
            w.frame(w.DATA, w.END_STREAM, 1, grpc_message(request.SerializeToString())),
        )
        assert call_end(client, 1)["grpc-status"] == DEADLINE_EXCEEDED
        assert eventually(lambda: _failures(metrics, model))  # counted once its work has unwound
        assert _failures(metrics, model) == {"504": 1}
    finally:
        client.close()
        loop.run(handle.stop(0.5))


@pytest.mark.parametrize(
    ("deadline_s", "status"),
    [
        (DEADLINE_SLACK_S / 2, "504"),  # a client's reset as its own deadline passes comes a moment early
        (60.0, "499"),  # a client that gave up long before its deadline
        (None, "499"),  # no deadline at all (HTTP; a gRPC call without grpc-timeout)
    ],
)
def test_a_call_cancelled_as_its_deadline_comes_is_counted_as_the_deadline_and_one_cancelled_before_as_its_client_gone(
    deadline_s: float | None, status: str
) -> None:
    metrics = GatewayMetrics()

    async def cancelled() -> None:
        task = asyncio.create_task(observed(metrics, "double", asyncio.Event().wait(), deadline_s))
        await asyncio.sleep(0)  # one turn of the loop: the task is waiting in its work
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled())
    assert _failures(metrics, "double") == {status: 1}
