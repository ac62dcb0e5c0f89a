"""What the gRPC audit found a client could get wrong answers, silence or a frozen server for: each a
client mistake answered with a status naming it (on both gRPC servers), or a stream whose waiting
answers cost the server in proportion to their bytes."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.protocol import grpc_servicer
from serving.protocol import h2_wire as w
from tests.h2_client import (
    MODEL_STREAM_INFER,
    call_headers,
    connected,
    doubling_request,
    grpc_message,
    stream_parts,
)
from tests.test_grpc import FakeBackend, fake_server  # noqa: F401 - the servicer's module fixture, both servers (loop: conftest)


def _stub_call(port: int, method: str, request: object) -> grpc.RpcError:
    """The error a unary call of ``method`` with ``request`` ends in (the test fails if it succeeds)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stub, method)(request, timeout=10)
        assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live  # the server serves on
    return caught.value


@pytest.mark.parametrize(
    "kind",
    ["string_param", "double_param", "bool_param", "negative", "too_long"],
)
def test_a_timeout_parameter_that_is_not_a_positive_integer_is_invalid_argument_as_on_http(
    fake_server,  # noqa: F811
    kind: str,
) -> None:
    """Triton's ``timeout`` is an int64 of microseconds; HTTP refuses any other value. Over gRPC a
    string, a double or a negative one was dropped without a word, and the request queued without the
    limit its client asked for."""
    request = doubling_request(np.ones((1, 3), np.float32))
    value = request.parameters["timeout"]
    if kind == "string_param":
        value.string_param = "250000"
    elif kind == "double_param":
        value.double_param = 250000.0
    elif kind == "bool_param":
        value.bool_param = True
    elif kind == "negative":
        value.int64_param = -250000
    else:  # past an int64, which Triton reads it as
        value.uint64_param = 2**63
    error = _stub_call(fake_server[1].port, "ModelInfer", request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "parameter 'timeout' must be a number of microseconds from 0 (none)" in error.details()


def test_a_timeout_parameter_of_zero_is_no_timeout_as_triton_reads_it(fake_server) -> None:  # noqa: F811
    request = doubling_request(np.ones((1, 3), np.float32))
    request.parameters["timeout"].int64_param = 0
    with grpc.insecure_channel(f"127.0.0.1:{fake_server[1].port}") as channel:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert fake_server[0].last_request.timeout_s is None


@pytest.mark.parametrize("kind", ["string_param", "double_param", "negative"])
def test_a_classification_count_that_is_not_a_non_negative_integer_is_refused_as_on_http(
    fake_server,  # noqa: F811
    kind: str,
) -> None:
    request = doubling_request(np.ones((1, 3), np.float32))
    value = request.outputs.add(name="y").parameters["classification"]
    if kind == "string_param":
        value.string_param = "2"
    elif kind == "double_param":
        value.double_param = 2.0
    else:
        value.int64_param = -1
    error = _stub_call(fake_server[1].port, "ModelInfer", request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "classification must be a non-negative integer" in error.details()


def test_a_classification_count_of_zero_asks_for_the_plain_tensor_as_on_http(fake_server) -> None:  # noqa: F811
    """HTTP reads 0 as no classification; gRPC refused it."""
    request = doubling_request(np.ones((1, 3), np.float32))
    request.outputs.add(name="y").parameters["classification"].int64_param = 0
    with grpc.insecure_channel(f"127.0.0.1:{fake_server[1].port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(request, timeout=10)
    assert reply.outputs[0].datatype == "FP32"
    assert fake_server[0].last_request.classification == {}


def test_typed_contents_in_another_datatypes_field_are_refused_naming_the_field(
    fake_server,  # noqa: F811
) -> None:
    """FP32 values sent in ``int_contents`` were read as no values at all ("needs 3 elements, got 0"):
    the answer names the field they belong in, as Triton's does."""
    request = service_pb2.ModelInferRequest(model_name="double")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3]).contents.int_contents.extend([1, 2, 3])
    error = _stub_call(fake_server[1].port, "ModelInfer", request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "tensor 'x': FP32 values go in contents.fp32_contents, got int_contents"


@pytest.mark.parametrize("letter", ["é", "😀", "a"], ids=["accented", "emoji", "ascii"])
def test_a_long_error_message_reaches_the_client_cut_to_what_its_headers_hold(
    fake_server,  # noqa: F811
    letter: str,
) -> None:
    """An error echoing a long model name (5 000 accented letters encode to 30 KB of grpc-message, past
    grpc clients' 16 KiB header limit) reached the client as RESOURCE_EXHAUSTED "received metadata size
    exceeds hard limit", its status lost; it is cut to 4 KiB encoded, "..." marking the cut."""
    name = letter * 20_000
    for method, request in (
        ("ModelInfer", service_pb2.ModelInferRequest(model_name=name)),
        ("ModelMetadata", service_pb2.ModelMetadataRequest(name=name)),
    ):
        error = _stub_call(fake_server[1].port, method, request)
        assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
        assert error.details().startswith(f"unknown model '{letter * 100}")
        assert error.details().endswith("...")
        assert len(w.percent_encode(error.details())) <= w.MESSAGE_BYTES


def test_a_short_error_message_is_sent_whole() -> None:
    message = "unknown model 'é😀'; available: ['double']"
    assert w.bounded_message(message) == message
    assert w.bounded_message("%" * (w.MESSAGE_BYTES // 3)) == "%" * (w.MESSAGE_BYTES // 3)


def test_answers_waiting_for_a_streams_window_wait_whole_and_leave_in_order_as_it_opens() -> None:
    """A stream's answers queued behind one waiting for the client's window were each joined to the
    bytes waiting before them, a copy of them all: 20 000 answers waiting cost the loop 1.5 GB of
    copying (2.4 s, quadratic in their number). Each now waits whole behind the first, and they leave
    joined once, in order, as the client grants window a few hundred bytes at a time."""
    count = 300
    requests = []
    for i in range(count):
        request = doubling_request(np.full((1, 3), i, np.float32))
        request.id = f"r{i}"
        requests.append(grpc_message(request.SerializeToString()))
    with connected() as h2:
        h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 0}))
        h2.send(h2.headers(1, call_headers(MODEL_STREAM_INFER)))
        h2.send(w.frame(w.DATA, w.END_STREAM, 1, b"".join(requests)))
        call = h2.connection.calls[1]
        assert call.owed == count  # every request answered, no answer sent
        first = service_pb2.ModelStreamInferResponse.FromString(bytes(call.pending.parts[0][5:]))
        assert first.infer_response.id == "r0"  # the first answer waits alone, the others whole behind it
        assert len(call.pending.parts) == count
        frames = h2.frames()
        while 1 in h2.connection.calls:
            h2.send(w.window_update(1, 997))
            frames += h2.frames()
    blocks, body = stream_parts(frames, 1)
    replies, at = [], 0
    while at < len(body):
        size = int.from_bytes(body[at + 1 : at + 5], "big")
        replies.append(service_pb2.ModelStreamInferResponse.FromString(body[at + 5 : at + 5 + size]))
        at += 5 + size
    assert at == len(body) and blocks[-1]["grpc-status"] == "0"
    assert [r.infer_response.id for r in replies] == [f"r{i}" for i in range(count)]
    for i, reply in enumerate(replies):
        got = np.frombuffer(reply.infer_response.raw_output_contents[0], np.float32)
        assert got.tolist() == [2.0 * i] * 3


def test_an_unknown_model_is_not_found_before_its_tensors_are_read(fake_server) -> None:  # noqa: F811
    """HTTP answers 404 for an unknown model whatever its body; over gRPC the tensors were decoded
    first, so a request naming a model that is not served got a tensor's INVALID_ARGUMENT (the wrong
    thing to fix), after up to 64 MiB were decoded for nothing."""
    request = service_pb2.ModelInferRequest(model_name="no_such_model")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    request.raw_input_contents.append(b"short")
    error = _stub_call(fake_server[1].port, "ModelInfer", request)
    assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
    assert "unknown model 'no_such_model'" in error.details()


class _GatedBackend(FakeBackend):
    """``double`` held at a gate: how many of a stream's requests the servicer runs at once."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.running = self.most = 0

    async def infer(self, request):  # noqa: ANN001
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.gate.wait()
            return await super().infer(request)
        finally:
            self.running -= 1


class _NoDeadline:
    def time_remaining(self) -> None:
        return None


def test_a_stream_runs_at_most_its_in_flight_bound_at_once_and_answers_every_request(monkeypatch) -> None:
    """A client sending tiny messages fast made the servicer a task per message, bounded only by the
    body budget's bytes; the rest now wait in the stream until a slot frees."""
    monkeypatch.setattr(grpc_servicer, "STREAM_IN_FLIGHT", 4)
    backend = _GatedBackend()
    servicer = grpc_servicer.InferenceServicer(backend)

    async def requests():
        for n in range(10):
            request = doubling_request(np.ones((1, 3), np.float32))
            request.id = str(n)
            yield request

    async def scenario() -> list[str]:
        replies = servicer.ModelStreamInfer(requests(), _NoDeadline())
        first = asyncio.ensure_future(replies.__anext__())
        while backend.running < 4:  # the bound reached: the reader waits for a slot
            await asyncio.sleep(0)
        for _ in range(20):  # and stays waiting while the gate is shut
            await asyncio.sleep(0)
        assert backend.running == 4
        backend.gate.set()
        answered = [(await first).infer_response.id]
        answered += [reply.infer_response.id async for reply in replies]
        return answered

    answered = asyncio.run(scenario())
    assert sorted(answered, key=int) == [str(n) for n in range(10)]
    assert backend.most == 4
