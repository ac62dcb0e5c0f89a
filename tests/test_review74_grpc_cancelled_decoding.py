"""A gRPC ModelInfer request cancelled after its servicer started but before the model ran is counted.

A call whose typed ``contents`` exceed ``LOOP_ELEMENTS`` has its inputs decoded in a thread, before
:func:`~serving.metrics.observed` sees it. Its client's reset or its deadline in that window ended the
call with nothing in ``kiln_requests_total``, ``kiln_request_failures_total`` or the statistics' fail
count, the gap ``unserved`` closed for calls whose servicer had not started yet. Driven in memory on the
harness's own clock (tests/h2_client.py), the decoding thread held on an event.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from serving.metrics import GatewayMetrics
from serving.protocol import grpc_codec
from serving.protocol import h2_wire as w
from tests.h2_client import MODEL_STREAM_INFER, Harness, call_headers, doubling_request, grpc_message
from tests.test_metrics_n_grpc_partial import MeteredHarness


class HeldDecode:
    """``decode_inputs`` in its thread, held until :attr:`go` is set (:attr:`entered` once it waits)."""

    def __init__(self) -> None:
        self.entered, self.go, self.done = threading.Event(), threading.Event(), threading.Event()
        self.real = grpc_codec.decode_inputs

    def __call__(self, request: Any) -> dict[str, np.ndarray]:
        self.entered.set()
        try:
            self.go.wait(10)
            return self.real(request)
        finally:
            self.done.set()


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> HeldDecode:
    decode = HeldDecode()
    monkeypatch.setattr(grpc_codec, "decode_inputs", decode)
    monkeypatch.setattr(grpc_codec, "LOOP_ELEMENTS", 0)  # every typed request decodes in a thread
    return decode


@pytest.fixture
def h2(held: HeldDecode) -> Iterator[Harness]:
    MeteredHarness.metrics = GatewayMetrics()
    harness = MeteredHarness()
    harness.frames()
    yield harness
    held.go.set()
    held.done.wait(10)
    harness.close()


def _typed(model: str = "double") -> bytes:
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    tensor.contents.fp32_contents.extend(range(6))
    return grpc_message(request.SerializeToString())


def _turns(h2: Harness, count: int = 5) -> None:
    for _ in range(count):
        h2.loop.run_until_complete(asyncio.sleep(0))


def _counted(model: str = "double") -> dict[str, float]:
    metrics = MeteredHarness.metrics
    found = {
        outcome: metrics.sample("kiln_requests_total", model=model, outcome=outcome)
        for outcome in ("success", "failure")
    }
    for status in ("499", "504"):
        found[status] = metrics.sample("kiln_request_failures_total", model=model, status=status)
    return {key: value for key, value in found.items() if value}


def test_a_call_reset_while_its_inputs_decode_in_a_thread_counts_as_499(h2, held) -> None:
    h2.connection.data_received(h2.call(1, _typed()))
    _turns(h2)
    assert held.entered.wait(10)
    h2.connection.data_received(w.rst_stream(1, w.CANCEL))
    _turns(h2)
    assert _counted() == {"failure": 1, "499": 1}


def test_a_call_whose_deadline_passes_while_its_inputs_decode_counts_as_504(h2, held) -> None:
    h2.connection.data_received(h2.call(1, _typed(), grpc_timeout="100m"))
    _turns(h2)
    assert held.entered.wait(10)
    h2.now += 0.1
    _turns(h2)  # the deadline's timer cancels the servicer
    assert _counted() == {"failure": 1, "504": 1}


def test_a_streams_request_cancelled_while_its_inputs_decode_counts_as_499(h2, held) -> None:
    h2.send(h2.headers(1, call_headers(MODEL_STREAM_INFER)))
    h2.connection.data_received(w.frame(w.DATA, 0, 1, _typed()))
    _turns(h2)
    assert held.entered.wait(10)
    h2.connection.data_received(w.rst_stream(1, w.CANCEL))
    _turns(h2, 20)
    assert _counted() == {"failure": 1, "499": 1}


def test_a_call_cancelled_while_its_model_runs_is_still_counted_once(h2, held) -> None:
    held.go.set()
    hang = grpc_message(doubling_request(np.ones((2, 3), np.float32), model="hang").SerializeToString())
    h2.connection.data_received(h2.call(1, hang))
    _turns(h2)
    h2.connection.data_received(w.rst_stream(1, w.CANCEL))
    _turns(h2)
    assert _counted("hang") == {"failure": 1, "499": 1}
