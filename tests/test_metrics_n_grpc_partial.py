"""A gRPC ModelInfer call whose request message never arrives whole (its client's deadline passes, or
its DATA pauses past the read timeout) is ended DEADLINE_EXCEEDED by Kiln's server before any servicer
sees it: counted as a 504 for the model its first bytes name, as HTTP/1 counts a body ended by its
read timeout (408). Driven in memory on the harness's own clock (tests/h2_client.py)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from serving.metrics import GatewayMetrics
from serving.protocol import grpc_h2
from serving.protocol import h2_wire as w
from serving.protocol.grpc_server import stream_methods, unary_methods
from serving.protocol.grpc_servicer import InferenceServicer
from serving.protocol.limits import BodyBudget
from tests.h2_client import Harness, answer, call_headers, doubling_request, grpc_message
from tests.test_grpc import FakeBackend

READ_TIMEOUT = 0.3
SMALL = grpc_message(doubling_request(np.arange(6, dtype=np.float32).reshape(2, 3)).SerializeToString())
# past LOOP_JOIN_BYTES: gathered in a buffer of its own from its prefix on
LARGE = grpc_message(doubling_request(np.zeros((2, 1 << 17), dtype=np.float32)).SerializeToString())
UNKNOWN = grpc_message(doubling_request(np.zeros((2, 3), dtype=np.float32), "nothere").SerializeToString())


class MeteredHarness(Harness):
    """The harness's connection, its servicer recording into ``metrics``."""

    metrics: GatewayMetrics

    @staticmethod
    async def _server(
        max_message_bytes: int, read_timeout_s: float, budget: BodyBudget | None, send_timeout_s: float
    ) -> grpc_h2.H2GrpcServer:
        servicer = InferenceServicer(FakeBackend(), MeteredHarness.metrics)
        methods, streams = unary_methods(servicer), stream_methods(servicer)
        return grpc_h2.H2GrpcServer(
            methods, max_message_bytes, read_timeout_s, budget, send_timeout_s, streams
        )


@pytest.fixture
def h2() -> Iterator[Harness]:
    MeteredHarness.metrics = GatewayMetrics()
    harness = MeteredHarness(max_message_bytes=4 << 20, read_timeout_s=READ_TIMEOUT)
    harness.frames()
    yield harness
    harness.close()


def _failures(status: str) -> float:
    return MeteredHarness.metrics.sample("kiln_request_failures_total", model="double", status=status) or 0.0


def _cut(h2: Harness, stream: int, message: bytes, sent: int, **headers: str) -> str:
    """Send ``sent`` bytes of ``message`` on ``stream`` and wait past the read timeout: the status."""
    h2.send(h2.headers(stream, call_headers(**headers)), w.frame(w.DATA, 0, stream, message[:sent]))
    h2.advance(READ_TIMEOUT * 1.1)
    return answer(h2.frames(), stream)[2]["grpc-status"]


@pytest.mark.parametrize("message", [SMALL, LARGE], ids=["small", "large"])
def test_a_message_cut_by_the_read_timeout_counts_as_504_for_the_model_it_names(h2, message) -> None:
    assert _cut(h2, 1, message, len(message) // 2) == "4"  # DEADLINE_EXCEEDED
    assert _failures("504") == 1
    assert MeteredHarness.metrics.sample("kiln_requests_total", model="double", outcome="failure") == 1


def test_a_message_cut_by_its_deadline_counts_as_504(h2) -> None:
    assert _cut(h2, 1, SMALL, 20, grpc_timeout="100m") == "4"
    assert _failures("504") == 1


def test_a_cut_message_naming_no_model_served_or_none_yet_adds_no_series(h2) -> None:
    assert _cut(h2, 1, UNKNOWN, len(UNKNOWN) // 2) == "4"
    assert _cut(h2, 3, SMALL, 8) == "4"  # the name not arrived whole
    assert _failures("504") == 0
    assert "nothere" not in MeteredHarness.metrics.render().decode()
