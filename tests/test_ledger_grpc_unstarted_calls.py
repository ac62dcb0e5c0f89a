"""A gRPC ModelInfer call that arrived whole but ended before its servicer started (its client's reset
read in the same bytes as the call, a reset as its deadline passed, or its message completed after its
deadline) is counted, as a cancelled request is: 499, or 504 where its deadline was due. Under load the
event loop read a call and its end in one turn, and the client's DEADLINE_EXCEEDED appeared nowhere in
``kiln_requests_total`` or the statistics' ``fail`` (8 of 240 such calls in a storm). Driven in memory
on the harness's own clock (tests/h2_client.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from serving.metrics import GatewayMetrics
from serving.protocol import h2_wire as w
from tests.h2_client import MESSAGE, MODEL_STREAM_INFER, Harness, answer, call_headers
from tests.test_metrics_n_grpc_partial import MeteredHarness


@pytest.fixture
def h2() -> Iterator[Harness]:
    MeteredHarness.metrics = GatewayMetrics()
    harness = MeteredHarness()
    harness.frames()
    yield harness
    harness.close()


def _counted() -> dict[str, float]:
    """The ``double`` model's requests by outcome and its failures by status, where not zero."""
    metrics = MeteredHarness.metrics
    found = {
        outcome: metrics.sample("kiln_requests_total", model="double", outcome=outcome)
        for outcome in ("success", "failure")
    }
    for status in ("499", "504"):
        found[status] = metrics.sample("kiln_request_failures_total", model="double", status=status)
    return {key: value for key, value in found.items() if value}


def test_a_call_reset_by_its_client_before_its_servicer_started_counts_as_499(h2) -> None:
    h2.send(h2.call(1, MESSAGE), w.rst_stream(1, w.CANCEL))  # one read: dispatched, then reset
    assert _counted() == {"failure": 1, "499": 1}


def test_a_call_reset_as_its_deadline_passed_before_its_servicer_started_counts_as_504(h2) -> None:
    h2.connection.data_received(h2.call(1, MESSAGE, grpc_timeout="100m"))  # its task not yet run
    h2.now += 0.1
    h2.send(w.rst_stream(1, w.CANCEL))
    assert _counted() == {"failure": 1, "504": 1}


def test_a_message_completed_after_its_deadline_counts_as_504(h2) -> None:
    message = MESSAGE
    h2.connection.data_received(h2.headers(1, call_headers(grpc_timeout="100m")))
    h2.connection.data_received(w.frame(w.DATA, 0, 1, message[:10]))
    h2.now += 0.2  # the loop late: the deadline's timer not run before the rest is read
    h2.send(w.frame(w.DATA, w.END_STREAM, 1, message[10:]))
    assert answer(h2.frames(), 1)[2]["grpc-status"] == "4"  # DEADLINE_EXCEEDED
    assert _counted() == {"failure": 1, "504": 1}


def test_a_call_served_is_counted_once(h2) -> None:
    h2.send(h2.call(1, MESSAGE))
    h2.send(w.rst_stream(1, w.CANCEL))  # after its answer: nothing left to count
    assert answer(h2.frames(), 1)[2]["grpc-status"] == "0"
    assert _counted() == {"success": 1}


def test_a_streams_request_read_but_cancelled_with_its_stream_before_it_began_counts_as_499(h2) -> None:
    h2.send(h2.headers(1, call_headers(MODEL_STREAM_INFER)))  # the servicer waits for a request
    h2.send(w.frame(w.DATA, 0, 1, MESSAGE), w.rst_stream(1, w.CANCEL))  # read, then reset: one read
    assert _counted() == {"failure": 1, "499": 1}
