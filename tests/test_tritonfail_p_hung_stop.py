"""A gateway translating over Triton (``--triton-translate scheduler``) told to stop while Triton is
hung (SIGSTOP, a wedged node): its decode thread sat in a blocking Triton call, which only its client
timeout (``--request-timeout-s``) ended, and the translators' stop joined that thread past its
shutdown grace, whatever the grace: the gateway outlived the bound the docs give its stop (three
graces), up to a Kubernetes SIGKILL. No Triton needed: a gRPC server whose ModelInfer never answers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2_grpc

from serving.decoding.scheduler import DecodingScheduler
from serving.decoding.scheduler_config import SchedulerConfig
from serving.errors import Unavailable
from serving.execution.triton import TritonBackend
from tests.test_scheduler import LONG, SPEC, fake_encoder
from tests.test_triton_backend_faults import _Repository
from tests.waiting import until

HUNG_S = 20.0  # how long the hung server holds a call: what the stop took before the fix


class _Hung(service_pb2_grpc.GRPCInferenceServiceServicer):
    """A Triton whose ModelInfer never answers (until the test ends): a stopped or wedged server."""

    def __init__(self) -> None:
        self.called, self.release = threading.Event(), threading.Event()

    def ModelInfer(self, request, context):  # noqa: ANN001, N802 (the gRPC method's name)
        self.called.set()
        self.release.wait(HUNG_S)
        context.abort(grpc.StatusCode.UNAVAILABLE, "released by the test")


@contextmanager
def fake_triton(servicer: Any) -> Iterator[str]:
    """``servicer`` served as Triton's gRPC inference service on a free port: its address; at the end its
    ``release`` event set (a held call let go) and the server stopped."""
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        servicer.release.set()
        server.stop(0)


@pytest.fixture
def hung() -> Iterator[tuple[_Hung, str]]:
    servicer = _Hung()
    with fake_triton(servicer) as url:
        yield servicer, url


def test_a_triton_runner_blocked_on_a_hung_triton_is_cancelled_at_once(hung) -> None:
    servicer, url = hung
    backend = TritonBackend(url, timeout_s=60, repository=_Repository())
    run = backend.runner("double")
    failed: list[BaseException] = []

    def call() -> None:
        try:
            run({"x": np.zeros((1, 2), np.float32)})
        except BaseException as error:  # noqa: BLE001 - the test reads it
            failed.append(error)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    assert servicer.called.wait(10)
    run.cancel()  # from another thread, as the scheduler's stop calls it
    thread.join(5)
    assert not thread.is_alive(), "the blocking call outlived its cancel"
    assert len(failed) == 1 and isinstance(failed[0], Unavailable), failed
    assert "cancelled" in failed[0].message


def test_a_scheduler_over_a_hung_triton_stops_within_its_grace(hung) -> None:
    servicer, url = hung
    backend = TritonBackend(url, timeout_s=60, repository=_Repository())
    run = backend.runner("double")

    def decoder(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        run({"x": np.zeros((1, 2), np.float32)})  # hangs: Triton does not answer
        raise AssertionError("the hung server answered")

    decoder.cancel = getattr(run, "cancel", lambda: None)  # type: ignore[attr-defined]  # the runner's it wraps
    scheduler = DecodingScheduler("fake", SPEC, fake_encoder, decoder, SchedulerConfig(timeout_s=60))

    async def body() -> tuple[float, BaseException | None]:
        await scheduler.start()
        request = asyncio.ensure_future(scheduler.submit([[5, 6, 7]], LONG, timeout_s=60))
        await until(servicer.called.is_set)
        started = time.monotonic()
        await scheduler.stop(grace_s=0.5)
        took = time.monotonic() - started
        return took, (await asyncio.gather(request, return_exceptions=True))[0]

    took, answer = asyncio.run(body())
    assert took < 5.0, f"the stop waited {took:.1f} s for the hung call (grace 0.5 s)"
    assert isinstance(answer, Unavailable), answer  # the request is answered, not left hanging
