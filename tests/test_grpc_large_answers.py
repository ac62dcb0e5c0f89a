"""Large gRPC answers leave Kiln's HTTP/2 server without copies on the event loop (grpc_codec.RawAnswer,
grpc_call.Outgoing, grpc_h2's flush): a 50 MB answer built as one protobuf message was copied five
times there (240-460 ms of every other request's time). Their bytes on the wire stay exactly those
protobuf writes, frames and windows stay as the client set them, and small answers keep the protobuf
message. Each check says what reached the transport, never how long it took."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2

from serving.execution.base import InferRequest, InferResponse
from serving.protocol import grpc_codec, grpc_h2
from serving.protocol import h2_wire as w
from serving.protocol.grpc_server import start_grpc_server, stream_methods, unary_methods
from serving.protocol.grpc_servicer import FINAL_RESPONSE, InferenceServicer
from serving.protocol.http1_writes import JOIN_BYTES
from tests.h2_client import (
    MODEL_STREAM_INFER,
    Harness,
    answer,
    call_headers,
    doubling_request,
    grpc_message,
    stream_parts,
)
from tests.test_grpc import FakeBackend, LoopThread, _input

REQUEST = doubling_request(np.ones((1, 3), np.float32))
LARGE_K = np.arange(400_000, dtype=np.float32).reshape(4, -1, 100)  # 1.6 MB
LARGE_V = -np.arange(300_000, dtype=np.float32)  # 1.2 MB
OUTPUTS = {
    "several large": {"k": LARGE_K, "v": LARGE_V},
    "mixed": {
        "mask": np.arange(64 * 256).reshape(64, 256) % 3 == 0,
        "k": LARGE_K,
        "empty": np.zeros((0, 4), np.float32),
        "text": np.array([b"ab", b"", "\u00e9".encode()], dtype=object),
        "half": np.arange(5, dtype=np.float16),
        "v": LARGE_V,
    },
    "not contiguous": {"kt": LARGE_K.transpose(2, 1, 0), "ids": np.arange(5, dtype=np.int64)},
    "large BYTES": {"text": np.array([b"xyz"] * 150_000, dtype=object)},
}


def _response(outputs: dict[str, np.ndarray], request_id: str = "") -> InferResponse:
    return InferResponse(model="encoder", version="3", outputs=outputs, request_id=request_id)


def _protobuf(outputs: dict[str, np.ndarray]) -> service_pb2.ModelInferResponse:
    """The answer as one protobuf message: what the bytes on the wire must be."""
    return grpc_codec.encode_response(_response(outputs), REQUEST)


def _joined(message: Any) -> bytes:
    return b"".join(message.pieces())


def _views_of(piece: Any, arrays: list[np.ndarray]) -> bool:
    return isinstance(piece, memoryview) and any(np.shares_memory(np.asarray(piece), a) for a in arrays)


# --- the message in pieces ------------------------------------------------------------------------


@pytest.mark.parametrize("outputs", OUTPUTS.values(), ids=OUTPUTS.keys())
def test_a_large_answer_in_pieces_is_the_bytes_protobuf_writes_for_it(outputs) -> None:
    request = service_pb2.ModelInferRequest(id="req-7")
    raw = grpc_codec.encode_response(_response(outputs), request, pieces=True)
    assert isinstance(raw, grpc_codec.RawAnswer)
    expected = grpc_codec.encode_response(_response(outputs), request)
    assert _joined(raw) == expected.SerializeToString()
    assert service_pb2.ModelInferResponse.FromString(_joined(raw)) == expected


@pytest.mark.parametrize("outputs", [{}, {"empty": np.zeros(0, np.float32)}, {"one": np.ones(3, np.int32)}])
def test_an_answer_of_small_or_no_outputs_written_in_pieces_is_still_protobuf_s_bytes(outputs) -> None:
    assert _joined(grpc_codec.raw_answer(_response(outputs, "r"), REQUEST)) == (
        grpc_codec.encode_response(_response(outputs, "r"), REQUEST).SerializeToString()
    )


def test_parameters_set_on_an_answer_in_pieces_and_its_stream_wrapper_keep_protobuf_s_bytes() -> None:
    """The servicer marks each answer of a stream final after building it, as Triton does."""
    outputs = OUTPUTS["mixed"]
    raw = grpc_codec.encode_response(_response(outputs), REQUEST, pieces=True)
    streamed = grpc_codec.stream_response(raw)
    streamed.infer_response.parameters[FINAL_RESPONSE].bool_param = True
    streamed.infer_response.parameters["note"].string_param = "kept"

    expected = service_pb2.ModelStreamInferResponse(infer_response=_protobuf(outputs))
    expected.infer_response.parameters[FINAL_RESPONSE].bool_param = True
    expected.infer_response.parameters["note"].string_param = "kept"
    assert _joined(streamed) == expected.SerializeToString()
    assert service_pb2.ModelStreamInferResponse.FromString(_joined(streamed)) == expected


def test_a_small_answer_stays_one_protobuf_message() -> None:
    small = {"probabilities": np.ones((1, 1000), np.float32)}
    reply = grpc_codec.encode_response(_response(small), REQUEST, pieces=True)
    assert type(reply) is service_pb2.ModelInferResponse
    assert type(grpc_codec.stream_response(reply)) is service_pb2.ModelStreamInferResponse


def test_a_large_tensor_is_a_view_of_its_array_not_a_copy() -> None:
    pieces = grpc_codec.encode_response(_response(OUTPUTS["mixed"]), REQUEST, pieces=True).pieces()
    large = [p for p in pieces if len(p) >= JOIN_BYTES]
    assert len(large) == 2 and all(_views_of(p, [LARGE_K, LARGE_V]) for p in large)


def test_the_raw_field_is_the_last_protobuf_writes() -> None:
    """What lets the head be serialized apart: protobuf writes fields in the order of their numbers."""
    fields = service_pb2.ModelInferResponse.DESCRIPTOR.fields
    assert max(fields, key=lambda f: f.number).name == "raw_output_contents"


# --- through Kiln's server ------------------------------------------------------------------------


class PresetBackend(FakeBackend):
    """FakeBackend whose ``double`` answers ``outputs``, as they are."""

    def __init__(self, outputs: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.outputs = outputs

    async def infer(self, request: InferRequest) -> InferResponse:
        return _response(self.outputs, request.request_id)


class PiecesHarness(Harness):
    """A Harness whose servicer hands large answers over in pieces (as Kiln's server gets it), every
    object the connection writes to its transport kept."""

    def __init__(self, backend: FakeBackend, **settings: Any) -> None:
        self.backend = backend
        self.writes: list[Any] = []
        super().__init__(**settings)
        keep = self.transport.write

        def write(data: Any) -> None:
            self.writes.append(data)
            keep(data)

        self.transport.write = write  # type: ignore[method-assign]

    async def _server(self, max_message_bytes, read_timeout_s, budget, send_timeout_s):  # noqa: ANN001, ANN202
        servicer = InferenceServicer(self.backend, pieces=True)
        methods, streams = unary_methods(servicer), stream_methods(servicer)
        return grpc_h2.H2GrpcServer(
            methods, max_message_bytes, read_timeout_s, budget, send_timeout_s, streams
        )


@pytest.fixture
def h2() -> Iterator[PiecesHarness]:
    harness = PiecesHarness(PresetBackend(OUTPUTS["mixed"]))
    harness.frames()
    yield harness
    harness.close()


def _large_frames_and_windows(h2: Harness) -> None:
    """What grpc core's clients allow and more: frames of up to 16 MiB, windows for the whole answer."""
    settings = {w.MAX_FRAME_SIZE: (1 << 24) - 1, w.INITIAL_WINDOW_SIZE: 1 << 24}
    h2.send(w.settings_frame(settings), w.window_update(0, 1 << 24))
    h2.frames()


def _data_sizes(frames: list, stream: int) -> list[int]:
    return [len(payload) for kind, _, on, payload in frames if kind == w.DATA and on == stream]


def _stream_messages(body: bytes) -> list[bytes]:
    messages, at = [], 0
    while at < len(body):
        size = int.from_bytes(body[at + 1 : at + 5], "big")
        messages.append(body[at + 5 : at + 5 + size])
        at += 5 + size
    assert at == len(body), "a message cut short"
    return messages


def _final(reply: service_pb2.ModelInferResponse) -> service_pb2.ModelStreamInferResponse:
    streamed = service_pb2.ModelStreamInferResponse(infer_response=reply)
    streamed.infer_response.parameters[FINAL_RESPONSE].bool_param = True
    return streamed


def test_a_large_unary_answer_reaches_the_transport_as_views_of_its_arrays(h2: PiecesHarness) -> None:
    _large_frames_and_windows(h2)
    h2.send(h2.call(1, grpc_message(REQUEST.SerializeToString())))
    frames = h2.frames()
    headers, message, trailers = answer(frames, 1)
    assert headers[":status"] == "200" and trailers["grpc-status"] == "0", trailers
    assert message == _protobuf(OUTPUTS["mixed"]).SerializeToString()
    assert sum(_views_of(piece, [LARGE_K, LARGE_V]) for piece in h2.writes) == 2
    assert max(map(len, (p for p in h2.writes if not isinstance(p, memoryview)))) < JOIN_BYTES


def test_a_large_answer_keeps_to_the_client_s_frame_size_and_windows(h2: PiecesHarness) -> None:
    """HTTP/2's defaults: frames of 16 KiB, 65 535 bytes of window until the client grants more."""
    h2.send(h2.call(1, grpc_message(REQUEST.SerializeToString())))
    first = h2.frames()
    assert sum(_data_sizes(first, 1)) == w.DEFAULT_WINDOW
    h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 1 << 24}), w.window_update(0, 1 << 24))
    frames = first + h2.frames()
    assert max(_data_sizes(frames, 1)) == w.DEFAULT_FRAME_SIZE
    _, message, trailers = answer(frames, 1)
    assert trailers["grpc-status"] == "0" and message == _protobuf(OUTPUTS["mixed"]).SerializeToString()


@pytest.mark.parametrize("large_frames", [True, False], ids=["large-frames", "default-windows"])
def test_large_stream_answers_are_protobuf_s_bytes_each_after_the_other(
    h2: PiecesHarness, large_frames: bool
) -> None:
    """Two answers on a stream; with HTTP/2's default windows the second waits behind the first."""
    if large_frames:
        _large_frames_and_windows(h2)
    request = grpc_message(REQUEST.SerializeToString())
    h2.send(h2.headers(1, call_headers(MODEL_STREAM_INFER)), w.frame(w.DATA, w.END_STREAM, 1, request * 2))
    frames = h2.frames()
    if not large_frames:
        assert sum(_data_sizes(frames, 1)) == w.DEFAULT_WINDOW
        h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 1 << 24}), w.window_update(0, 1 << 24))
        frames += h2.frames()
    blocks, body = stream_parts(frames, 1)
    assert [b.get("grpc-status") for b in blocks] == [None, "0"]
    expected = _final(_protobuf(OUTPUTS["mixed"])).SerializeToString()
    assert _stream_messages(body) == [expected, expected]
    assert sum(_views_of(piece, [LARGE_K, LARGE_V]) for piece in h2.writes) == (4 if large_frames else 0)


def test_a_small_answer_is_still_one_write_of_its_three_frames() -> None:
    harness = PiecesHarness(FakeBackend())
    try:
        harness.frames()
        written = len(harness.writes)
        harness.send(harness.call(1, grpc_message(REQUEST.SerializeToString())))
        frames = harness.frames()
        assert len(harness.writes) - written == 1  # headers, message, trailers (and the window update)
        _, message, trailers = answer(frames, 1)
        reply = service_pb2.ModelInferResponse.FromString(message)
        assert (
            trailers["grpc-status"] == "0" and np.frombuffer(reply.raw_output_contents[0], np.float32)[0] == 2
        )
    finally:
        harness.close()


# --- real clients, both servers -------------------------------------------------------------------


@pytest.mark.parametrize("server", ["kiln", "grpcio"])
def test_tritonclient_reads_a_large_answer_unary_and_streamed_from_either_server(server: str) -> None:
    loop = LoopThread()
    handle = loop.run(start_grpc_server(FakeBackend(), "127.0.0.1", 0, server=server))
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    expected = np.tile(x * 2, (100_000, 1))  # 1.2 MB: an answer in pieces on Kiln's server
    try:
        with grpcclient.InferenceServerClient(f"127.0.0.1:{handle.port}") as client:
            result = client.infer("double", [_input("x", x, "FP32")], parameters={"tile": 100_000})
            np.testing.assert_array_equal(result.as_numpy("y"), expected)
            answers: queue.Queue = queue.Queue()
            client.start_stream(callback=lambda result, error: answers.put((result, error)))
            client.async_stream_infer("double", [_input("x", x, "FP32")], parameters={"tile": 100_000})
            streamed, error = answers.get(timeout=30)
            client.stop_stream()
        assert error is None, error
        np.testing.assert_array_equal(streamed.as_numpy("y"), expected)
        assert streamed.get_response().parameters[FINAL_RESPONSE].bool_param
    finally:
        loop.run(handle.stop(1.0))
        loop.close()
