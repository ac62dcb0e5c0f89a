"""A stop past its grace cancels a decode worker's Triton calls by closing its runners' channels (the
encoder's and the decoder's together). A call the worker made after that, on the other runner (the
encoder's call was the hung one, and the decoder step of the requests already in the batch came
next), was grpc's ``ValueError: Cannot invoke RPC on closed channel!``: logged as a decoding failure
with its traceback, and those requests answered 500 instead of the stop's 503. No Triton needed: a
gRPC server that answers the decoder entry and never answers the encoder's."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.decoding.scheduler import DecodingScheduler
from serving.decoding.scheduler_config import SchedulerConfig
from serving.errors import ServingError, Unavailable
from serving.execution.triton import TritonBackend
from tests.test_scheduler import LONG, SPEC, FakeDecoder, fake_encoder
from tests.test_triton_backend_faults import _Repository
from tests.test_tritonfail_p_hung_stop import fake_triton
from tests.waiting import until

X = {"x": np.zeros((1, 2), np.float32)}


class _HalfHung(service_pb2_grpc.GRPCInferenceServiceServicer):
    """A Triton that answers model ``dec`` at once and never answers ``enc`` (until the test ends)."""

    def __init__(self) -> None:
        self.encoding, self.release = threading.Event(), threading.Event()

    def ModelInfer(self, request, context):  # noqa: ANN001, N802 (the gRPC method's name)
        if request.model_name == "enc":
            self.encoding.set()
            self.release.wait(20)
            context.abort(grpc.StatusCode.UNAVAILABLE, "released by the test")
        output = service_pb2.ModelInferResponse.InferOutputTensor(name="y", datatype="FP32", shape=[1, 2])
        return service_pb2.ModelInferResponse(
            model_name=request.model_name, outputs=[output], raw_output_contents=[bytes(8)]
        )


@pytest.fixture
def half_hung() -> Iterator[tuple[_HalfHung, str]]:
    servicer = _HalfHung()
    with fake_triton(servicer) as url:
        yield servicer, url


def test_a_call_on_a_cancelled_runner_is_the_stops_503_not_a_closed_channels_value_error(half_hung) -> None:
    _, url = half_hung
    run = TritonBackend(url, timeout_s=60, repository=_Repository()).runner("dec")
    assert run(X)["y"].shape == (1, 2)
    run.cancel()
    with pytest.raises(Unavailable, match="cancelled: the gateway is stopping"):
        run(X)


def test_the_decoder_step_after_a_cancelled_encoder_call_fails_its_requests_503_without_a_traceback(
    half_hung, caplog
) -> None:
    servicer, url = half_hung
    backend = TritonBackend(url, timeout_s=60, repository=_Repository())
    run_enc, run_dec = backend.runner("enc"), backend.runner("dec")
    fake, encodes = FakeDecoder(), [0]
    fake.gate = threading.Event()  # the first request's first step waits for the second request

    def encoder(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        encodes[0] += 1
        if encodes[0] > 1:  # the second request's join: Triton does not answer
            run_enc(X)
        return fake_encoder(inputs)

    def decoder(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = fake(inputs)
        run_dec(X)  # the step's call to Triton's decoder entry, answered
        return out

    encoder.cancel, decoder.cancel = run_enc.cancel, run_dec.cancel  # type: ignore[attr-defined]
    scheduler = DecodingScheduler("fake", SPEC, encoder, decoder, SchedulerConfig(timeout_s=60))

    async def body() -> list[BaseException | list]:
        await scheduler.start()
        first = asyncio.ensure_future(scheduler.submit([[5, 6, 7]], LONG, timeout_s=60))
        await until(lambda: bool(fake.calls) or scheduler._reserved > 0)
        second = asyncio.ensure_future(scheduler.submit([[8, 9]], LONG, timeout_s=60))
        await until(lambda: scheduler.queued > 0)
        fake.gate.set()
        await until(servicer.encoding.is_set)  # the second one's encoder call hangs; the first is running
        await scheduler.stop(grace_s=0.1)
        return await asyncio.gather(first, second, return_exceptions=True)

    with caplog.at_level(logging.WARNING, logger="serving.decoding.scheduler"):
        first, second = asyncio.run(body())
    assert isinstance(second, Unavailable) and "cancelled" in second.message, second
    assert isinstance(first, ServingError) and first.status == 503, first  # not a 500 naming ValueError
    assert "ValueError" not in first.message, first.message
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
