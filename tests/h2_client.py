"""Speaking HTTP/2 to Kiln's gRPC server by hand, for what real gRPC clients never send.

:class:`RawClient` is a socket sending and reading frames; :class:`Harness` is one server connection
over an in-memory transport, fed bytes and read back frame by frame with no socket and no timing, so
a test can cut the input anywhere and see exactly what the server answered to it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import hpack
import numpy as np
from tritonclient.grpc import service_pb2

from serving.protocol import grpc_h2
from serving.protocol import h2_wire as w
from serving.protocol.grpc_server import stream_methods, unary_methods
from serving.protocol.grpc_servicer import InferenceServicer
from serving.protocol.limits import BodyBudget
from tests.test_grpc import FakeBackend

Frame = tuple[int, int, int, bytes]  # type, flags, stream, payload

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"


def call_headers(path: str = MODEL_INFER, **extra: str) -> list[tuple[str, str]]:
    """The request headers of a gRPC call to ``path``, with ``extra`` ones (``grpc_encoding=...``)."""
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        ("content-type", "application/grpc"),
    ]
    return headers + [(name.replace("_", "-"), value) for name, value in extra.items()]


def doubling_request(x: np.ndarray, model: str = "double") -> service_pb2.ModelInferRequest:
    """A ModelInfer request of FakeBackend's ``double`` model on FP32 ``x``."""
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    return request


def grpc_message(message: bytes, compressed: bool = False) -> bytes:
    """gRPC's length-prefixed message: the compressed flag, the length, the bytes."""
    return bytes((int(compressed),)) + len(message).to_bytes(4, "big") + message


MESSAGE = grpc_message(doubling_request(np.arange(6, dtype=np.float32).reshape(2, 3)).SerializeToString())
# a whole ModelInfer message of FakeBackend's ``double`` on a 2×3 tensor: what most frame tests send


def parse_frames(data: bytes) -> tuple[list[Frame], bytes]:
    """The whole frames at the start of ``data``, and what is left of it."""
    frames, at = [], 0
    while len(data) - at >= 9:
        high, low, kind, flags, stream = w.HEAD.unpack_from(data, at)
        end = at + 9 + (high << 16 | low)
        if end > len(data):
            break
        frames.append((kind, flags, stream, data[at + 9 : end]))
        at = end
    return frames, data[at:]


def goaway_code(frame: Frame) -> int:
    return int.from_bytes(frame[3][4:8], "big")


def rst_code(frame: Frame) -> int:
    return int.from_bytes(frame[3], "big")


class RawClient:
    """A socket speaking HTTP/2 frames by hand."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.data = b""

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))

    def _read(self, size: int) -> bytes | None:
        while len(self.data) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.data += chunk
        out, self.data = self.data[:size], self.data[size:]
        return out

    def frame(self) -> Frame | None:
        """(type, flags, stream, payload) of the next frame; None once the server closed."""
        head = self._read(9)
        if head is None:
            return None
        high, low, kind, flags, stream = w.HEAD.unpack(head)
        payload = self._read(high << 16 | low)
        return None if payload is None else (kind, flags, stream, payload)

    def until(self, kind: int) -> Frame | None:
        while (got := self.frame()) is not None and got[0] != kind:
            pass
        return got

    def close(self) -> None:
        self.sock.close()


class _Transport:
    """What a Connection writes to, kept in memory."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = self.paused = self.aborted = False
        self.buffered = 0  # what get_write_buffer_size says: a test sets it to play a client not reading

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Harness:
    """One connection of Kiln's gRPC server (FakeBackend's models) on its own event loop, in memory.

    :meth:`send` hands bytes to the connection and runs the loop until every call it started has
    finished; :meth:`frames` returns what the server wrote since the last look. An exception anywhere
    (out of ``data_received`` or in a task) fails the test that caused it. The loop's clock is the
    harness's own: it stands still until :meth:`advance` moves it, so the server's timers (deadlines,
    read timeouts) fire exactly when a test says, however slow the machine running it.
    """

    def __init__(
        self,
        max_message_bytes: int = 1 << 20,
        preface: bool = True,
        read_timeout_s: float = 30.0,
        budget: BodyBudget | None = None,
        send_timeout_s: float = 60.0,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.now = 1000.0
        self.loop.time = lambda: self.now  # type: ignore[method-assign]  # the manual clock
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _, context: self.errors.append(context))
        self.server = self.loop.run_until_complete(
            self._server(max_message_bytes, read_timeout_s, budget, send_timeout_s)
        )
        self.connection = grpc_h2.Connection(self.server)
        self.transport = _Transport()
        self.connection.connection_made(self.transport)
        self.read_at = 0
        self.encoder = hpack.Encoder()
        if preface:
            self.send(w.PREFACE, w.settings_frame({}))

    @staticmethod
    async def _server(
        max_message_bytes: int, read_timeout_s: float, budget: BodyBudget | None, send_timeout_s: float
    ) -> grpc_h2.H2GrpcServer:
        servicer = InferenceServicer(FakeBackend())
        methods, streams = unary_methods(servicer), stream_methods(servicer)
        return grpc_h2.H2GrpcServer(
            methods, max_message_bytes, read_timeout_s, budget, send_timeout_s, streams
        )

    def send(self, *frames: bytes, chunk: int = 0) -> None:
        """Feed ``frames`` (in pieces of ``chunk`` bytes when given), then let the calls finish."""
        data = b"".join(frames)
        step = chunk or max(len(data), 1)
        for at in range(0, len(data), step):
            if self.transport.closed:
                break
            self.connection.data_received(data[at : at + step])
            self.loop.run_until_complete(self._settle())
        assert not self.errors, self.errors

    async def _settle(self) -> None:
        for _ in range(1000):
            tasks = [
                c.task
                for c in self.connection.calls.values()
                if c.task is not None and not c.task.done() and not c.streaming
            ]
            if not tasks:
                break
            await asyncio.wait(tasks)
        if any(c.streaming for c in self.connection.calls.values()):
            for _ in range(50):  # a stream's task waits for its client: its requests answered meanwhile
                await asyncio.sleep(0)
        await asyncio.sleep(0)  # the connection's write of this loop step
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        """Move the clock on by ``seconds`` and run what fell due (the connection's timers, the calls
        and writes they started)."""
        self.now += seconds
        self.loop.run_until_complete(self._settle())
        assert not self.errors, self.errors

    def frames(self) -> list[Frame]:
        """The frames written since the last call (the server's SETTINGS first of all)."""
        frames, rest = parse_frames(bytes(self.transport.written[self.read_at :]))
        assert not rest, f"a torn frame in the server's output: {rest!r}"
        self.read_at = len(self.transport.written)
        return frames

    def headers(self, stream: int, headers: list[tuple[str, str]], flags: int = w.END_HEADERS) -> bytes:
        return w.frame(w.HEADERS, flags, stream, self.encoder.encode(headers))

    def call(self, stream: int, message: bytes, **extra: str) -> bytes:
        """The frames of a whole ModelInfer call carrying ``message`` (already length-prefixed)."""
        return self.headers(stream, call_headers(**extra)) + w.frame(w.DATA, w.END_STREAM, stream, message)

    def close(self) -> None:
        self.connection.connection_lost(None)
        for _ in range(10):  # the cancelled tasks unwind (a stream's servicer, its own tasks in turn)
            self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()


@contextmanager
def connected(**settings: Any) -> Iterator[Harness]:
    """A :class:`Harness` (``settings`` its arguments) whose server's opening frames have been read,
    closed after use however the test ends."""
    harness = Harness(**settings)
    try:
        harness.frames()  # the server's SETTINGS and its ack of ours
        yield harness
    finally:
        harness.close()


def stream_parts(frames: Iterable[Frame], stream: int) -> tuple[list[dict[str, str]], bytes]:
    """The header blocks the server sent on ``stream`` and the bytes of its DATA, in order."""
    decoder = hpack.Decoder()
    blocks: list[dict[str, str]] = []
    body = b""
    for kind, _, on, payload in frames:
        if kind == w.HEADERS:  # decoded for every stream: the HPACK state is the connection's
            block = dict(decoder.decode(payload))
            if on == stream:
                blocks.append(block)
        elif kind == w.DATA and on == stream:
            body += payload
    return blocks, body


def answer(frames: Iterable[Frame], stream: int) -> tuple[dict[str, str], bytes, dict[str, str]]:
    """A call's response headers, message bytes and trailers, from the frames the server wrote."""
    blocks, body = stream_parts(frames, stream)
    if len(blocks) == 1:  # trailers-only
        return {}, b"", blocks[0]
    assert len(blocks) == 2, blocks
    return blocks[0], body[5:], blocks[1]


def call_end(client: RawClient, stream: int) -> dict[str, str]:
    """The trailers (or trailers-only headers) ``stream`` ends with, read off ``client``'s connection."""
    decoder = hpack.Decoder()  # every header block goes through it: the table is the connection's
    while (frame := client.frame()) is not None:
        if frame[0] == w.HEADERS:
            block = dict(decoder.decode(frame[3]))
            if frame[2] == stream and "grpc-status" in block:
                return block
    raise AssertionError("the connection closed before the call ended")
