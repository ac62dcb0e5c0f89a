"""Kiln's own gRPC server speaks HTTP/2 as gRPC clients expect: flow control, compression, resets,
protocol errors and a graceful stop, with the HPACK decoder checked against the ``hpack`` package."""

from __future__ import annotations

import asyncio
import socket
import threading
import zlib
from collections.abc import Iterator
from types import SimpleNamespace

import grpc
import hpack
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.execution.base import InferRequest, InferResponse
from serving.protocol import grpc_call, grpc_h2, h2_control
from serving.protocol import h2_wire as w
from serving.protocol.grpc_server import GrpcHandle, start_grpc_server
from tests.h2_client import RawClient, call_headers, doubling_request, grpc_message
from tests.test_grpc import FakeBackend, LoopThread

# --- HPACK and gRPC header values ------------------------------------------------------------------


def _expected(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), value.encode()) for name, value in headers]


@pytest.mark.parametrize("huffman", [True, False], ids=["huffman", "plain"])
def test_the_header_decoder_reads_what_hpack_encodes_as_its_table_fills_evicts_and_shrinks(huffman) -> None:
    encoder, decoder = hpack.Encoder(), w.HeaderDecoder()
    requests = [
        [(":method", "POST"), (":path", "/inference.GRPCInferenceService/ModelInfer"), ("te", "trailers")],
        [(":method", "POST"), (":path", "/inference.GRPCInferenceService/ModelInfer"), ("te", "trailers")],
        [("x-request", f"value-{'v' * 300}-{i}") for i in range(20)],  # evicts the first entries
        [(":path", "/inference.GRPCInferenceService/ModelInfer"), ("grpc-timeout", "99m")],
    ]
    for headers in requests:
        assert decoder.decode(encoder.encode(headers, huffman=huffman)) == _expected(headers)
    encoder.header_table_size = 64  # the next block starts with a table size update
    headers = [("x-small", "1"), (":path", "/a")]
    assert decoder.decode(encoder.encode(headers, huffman=huffman)) == _expected(headers)
    assert decoder.table_size == 64


def test_the_same_indexed_bytes_name_whatever_the_table_holds_now() -> None:
    decoder = w.HeaderDecoder()
    add = b"\x40" + bytes((3,)) + b"x-a" + bytes((1,)) + b"1"  # literal with incremental indexing
    decoder.decode(add)
    assert decoder.decode(b"\xbe") == [(b"x-a", b"1")]  # index 62: the newest dynamic entry
    decoder.decode(b"\x40" + bytes((3,)) + b"x-b" + bytes((1,)) + b"2")
    assert decoder.decode(b"\xbe") == [(b"x-b", b"2")]  # the remembered block no longer applies
    assert decoder.decode(b"\xbf") == [(b"x-a", b"1")]


def test_the_decoder_remembers_only_small_blocks() -> None:
    """Blocks read again are answered from memory, but only a call's usual small ones: remembering
    any block up to the limit let one client make a connection hold ~12 MB of them for its life."""
    decoder = w.HeaderDecoder()
    small = b"\x00" + bytes((3,)) + b"x-a" + bytes((1,)) + b"1"  # a literal without indexing
    assert decoder.decode(small) is decoder.decode(small)  # remembered
    for i in range(200):
        value = f"{i:04d}".encode() * 500  # 2 KB
        block = b"\x00" + bytes((3,)) + b"x-b" + w.encode_int(len(value), 7) + value
        assert decoder.decode(block) == [(b"x-b", value)]
    assert sum(map(len, decoder._seen)) <= 64 * 1024


_BOMB = b"\x40" + w.encode_int(1, 7) + b"a" + w.encode_int(4000, 7) + b"v" * 4000 + b"\xbe" * 20


@pytest.mark.parametrize(
    ("block", "fragment"),
    [
        (b"\xff\x00", "not in the table"),
        (b"\x3f\xe2\x1f", "table size"),
        (b"\x00\x05ab", "runs past"),
        (b"\x04", "missing"),  # a literal with :path's name, the block ending before its value
        (b"\x40\x01a", "missing"),
        (b"\x00", "missing"),
        (_BOMB, "header list above"),  # one 4 KB entry, then 20 one-byte references to it
    ],
    ids=[
        "index-beyond-the-table",
        "size-update-above-the-setting",
        "truncated-string",
        "value-missing",
        "indexed-literal-value-missing",
        "name-missing",
        "hpack-bomb",
    ],
)
def test_a_malformed_header_block_is_a_compression_error(block: bytes, fragment: str) -> None:
    with pytest.raises(w.H2Error, match=fragment) as caught:
        w.HeaderDecoder().decode(block)
    assert caught.value.code == w.COMPRESSION_ERROR


@pytest.mark.parametrize("bits", [4, 5, 6, 7])
def test_hpack_integers_round_trip_across_their_prefix(bits: int) -> None:
    for value in (0, 1, 14, 15, 16, 62, 63, 127, 128, 300, 16_384, 2**20):
        encoded = w.encode_int(value, bits)
        assert w._decode_int(encoded, 0, bits) == (value, len(encoded)), value


def test_grpc_timeouts_and_messages_are_read_and_written_as_grpc_specifies() -> None:
    assert w.parse_timeout(b"100m") == pytest.approx(0.1)
    assert w.parse_timeout(b"5S") == 5.0
    assert w.parse_timeout(b"2H") == 7200.0
    assert w.parse_timeout(b"7u") == pytest.approx(7e-6)
    for bad in (b"", b"S", b"123456789S", b"10x", b"1.5S"):
        assert w.parse_timeout(bad) is None, bad
    assert w.percent_encode("a%b\nc é") == b"a%25b%0Ac %C3%A9"


# --- the server, through real gRPC clients ---------------------------------------------------------


class BlockingBackend(FakeBackend):
    """``double`` waits for :attr:`release`; records when a call arrives and when it is cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = threading.Event()
        self.cancelled = threading.Event()
        self.release: asyncio.Event | None = None

    async def infer(self, request: InferRequest) -> InferResponse:
        if self.release is None:
            self.release = asyncio.Event()
        self.arrived.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return await super().infer(request)


@pytest.fixture
def server(loop: LoopThread) -> Iterator[GrpcHandle]:
    handle = loop.run(start_grpc_server(FakeBackend(), "127.0.0.1", 0, max_message_bytes=16 << 20))
    yield handle
    loop.run(handle.stop(1.0))


def _doubled(reply: service_pb2.ModelInferResponse, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(shape)


def _stub(channel: grpc.Channel) -> service_pb2_grpc.GRPCInferenceServiceStub:
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _channel(port: int, **kwargs) -> grpc.Channel:
    limits = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=limits, **kwargs)


def test_messages_larger_than_every_window_cross_both_ways(server: GrpcHandle) -> None:
    x = np.random.default_rng(0).standard_normal((700_000, 3)).astype(np.float32)  # 8.4 MB each way
    with _channel(server.port) as channel:
        reply = _stub(channel).ModelInfer(doubling_request(x), timeout=60)
    np.testing.assert_array_equal(_doubled(reply, x.shape), x * 2)


@pytest.mark.parametrize(
    "compression", [grpc.Compression.Gzip, grpc.Compression.Deflate], ids=["gzip", "deflate"]
)
def test_compressed_requests_are_read(server: GrpcHandle, compression: grpc.Compression) -> None:
    x = np.arange(3000, dtype=np.float32).reshape(1000, 3)
    with _channel(server.port, compression=compression) as channel:
        reply = _stub(channel).ModelInfer(doubling_request(x), timeout=10)
    np.testing.assert_array_equal(_doubled(reply, x.shape), x * 2)


def test_a_message_inflating_past_what_the_loop_takes_inflates_while_other_calls_are_answered(
    server: GrpcHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message of KILN_MAX_BODY_BYTES (64 MiB) inflates from 64 KiB of gzip in 0.2-0.5 s: on the event
    loop, every other call of the worker waited that long. Here the inflation of the whole message
    waits until a health call has been answered, which it can only be if it is not on the loop."""
    inflating, release = threading.Event(), threading.Event()

    class GatedInflater:
        def __init__(self, window: int) -> None:
            self.inner = zlib.decompressobj(window)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            if threading.current_thread().name.startswith("asyncio"):  # asyncio.to_thread's executor
                inflating.set()
                assert release.wait(30)
            return self.inner.decompress(data, max_length)

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

    monkeypatch.setattr(grpc_call, "zlib", SimpleNamespace(decompressobj=GatedInflater, error=zlib.error))
    x = np.zeros((grpc_call.LOOP_INFLATE_BYTES // 12 + 1, 3), np.float32)  # just over what the loop takes
    with _channel(server.port, compression=grpc.Compression.Gzip) as channel:
        stub = _stub(channel)
        inflated = stub.ModelInfer.future(doubling_request(x), timeout=60)
        assert inflating.wait(30)
        try:
            assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live
        finally:
            release.set()
        np.testing.assert_array_equal(_doubled(inflated.result(), x.shape), x * 2)


@pytest.mark.parametrize(
    ("encoding", "code"),
    [
        (None, grpc.StatusCode.INTERNAL),
        (b"identity", grpc.StatusCode.INTERNAL),
        (b"snappy", grpc.StatusCode.UNIMPLEMENTED),
    ],
)
def test_a_compressed_message_without_an_encoding_this_server_reads_ends_as_grpc_says(encoding, code) -> None:
    import gzip

    from serving.protocol.grpc_call import Aborted, decompress

    with pytest.raises(Aborted) as caught:
        decompress(encoding, gzip.compress(b"x" * 10), 1 << 20)
    assert caught.value.code == code, caught.value.details  # gRPC's doc/compression.md
    assert decompress(b"gzip", gzip.compress(b"x" * 10), 1 << 20) == b"x" * 10


def test_a_large_message_inflates_a_step_at_a_time_so_its_thread_lets_the_loop_run() -> None:
    """One zlib call inflating a whole 64 MiB message held the GIL ~30 ms for its output's join (the
    event loop's longest gap in a thread 39-175 ms; 2-5 ms a step at a time): no call asks for more
    than a step's output, and what comes out is the message, whole, or refused past the limit."""
    import gzip

    from serving.protocol.grpc_call import Aborted, decompress
    from serving.protocol.limits import INFLATE_STEP

    asked: list[int] = []

    class Recording:
        def __init__(self, window: int) -> None:
            self.inner = zlib.decompressobj(window)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            asked.append(max_length)
            return self.inner.decompress(data, max_length)

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

    plain = bytes(range(256)) * (3 * INFLATE_STEP // 256 + 7)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grpc_call, "zlib", SimpleNamespace(decompressobj=Recording, error=zlib.error))
        assert decompress(b"gzip", gzip.compress(plain, 1), len(plain)) == plain
        with pytest.raises(Aborted) as caught:
            decompress(b"gzip", gzip.compress(plain, 1), len(plain) - 1)
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert asked and 0 < max(asked) <= INFLATE_STEP


def test_a_method_the_servicer_lacks_is_unimplemented_and_the_connection_serves_on(server) -> None:
    with _channel(server.port) as channel:
        load = channel.unary_unary(
            "/inference.GRPCInferenceService/RepositoryModelLoad",
            request_serializer=service_pb2.RepositoryModelLoadRequest.SerializeToString,
            response_deserializer=service_pb2.RepositoryModelLoadResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            load(service_pb2.RepositoryModelLoadRequest(model_name="double"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "RepositoryModelLoad" in caught.value.details()
        assert _stub(channel).ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live


def test_a_message_above_the_limit_is_resource_exhausted_and_the_next_call_is_answered(loop) -> None:
    handle = loop.run(start_grpc_server(FakeBackend(), "127.0.0.1", 0, max_message_bytes=1 << 20))
    try:
        with _channel(handle.port) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                _stub(channel).ModelInfer(doubling_request(np.ones((200_000, 3), np.float32)), timeout=30)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "larger than max" in caught.value.details()
            x = np.ones((2, 3), np.float32)
            np.testing.assert_array_equal(
                _doubled(_stub(channel).ModelInfer(doubling_request(x), timeout=10), (2, 3)), x * 2
            )
    finally:
        loop.run(handle.stop(1.0))


def test_many_calls_in_flight_on_one_connection_each_get_their_own_answer(server: GrpcHandle) -> None:
    with _channel(server.port) as channel:
        stub = _stub(channel)
        inputs = [np.full((i % 7 + 1, 3), i, np.float32) for i in range(300)]
        futures = [stub.ModelInfer.future(doubling_request(x), timeout=30) for x in inputs]
        for x, future in zip(inputs, futures, strict=True):
            np.testing.assert_array_equal(_doubled(future.result(), x.shape), x * 2)


def test_tritonclient_with_its_own_options_is_answered(server: GrpcHandle) -> None:
    x = np.ones((4, 3), np.float32)
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}") as client:
        tensor = grpcclient.InferInput("x", [4, 3], "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("double", [tensor], compression_algorithm="gzip", client_timeout=10)
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)


def test_a_client_deadline_cancels_the_servicer_and_the_server_serves_on(loop: LoopThread) -> None:
    backend = BlockingBackend()
    handle = loop.run(start_grpc_server(backend, "127.0.0.1", 0))
    try:
        with _channel(handle.port) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                _stub(channel).ModelInfer(doubling_request(np.ones((1, 3), np.float32)), timeout=0.5)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert backend.cancelled.wait(10), "the client's RST_STREAM did not cancel the servicer"
            assert _stub(channel).ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live
    finally:
        loop.run(handle.stop(0.5))


def test_stopping_lets_a_call_in_flight_finish_and_stops_listening(loop: LoopThread) -> None:
    backend = BlockingBackend()
    handle = loop.run(start_grpc_server(backend, "127.0.0.1", 0))
    x = np.ones((2, 3), np.float32)
    with _channel(handle.port) as channel:
        call = _stub(channel).ModelInfer.future(doubling_request(x), timeout=30)
        assert backend.arrived.wait(10)
        stopping = asyncio.run_coroutine_threadsafe(handle.stop(10.0), loop.loop)
        loop.loop.call_soon_threadsafe(backend.release.set)
        np.testing.assert_array_equal(_doubled(call.result(), x.shape), x * 2)
        stopping.result(15)
    assert not handle.server.listener.is_serving()  # no new connections are taken


# --- the server, frame by frame --------------------------------------------------------------------


@pytest.fixture
def raw(server: GrpcHandle) -> Iterator[RawClient]:
    client = RawClient(server.port)
    client.send(w.PREFACE, w.settings_frame({}))
    yield client
    client.close()


def test_a_ping_is_answered_with_its_own_payload(raw: RawClient) -> None:
    raw.send(w.frame(w.PING, 0, 0, b"kiln-ok!"))
    assert raw.until(w.PING) == (w.PING, w.ACK, 0, b"kiln-ok!")


def test_settings_are_acknowledged(raw: RawClient) -> None:
    assert raw.until(w.SETTINGS)[1] == 0  # the server's own settings first
    raw.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 1 << 20}))
    assert raw.until(w.SETTINGS) == (w.SETTINGS, w.ACK, 0, b"")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (w.frame(w.WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"), w.FRAME_SIZE_ERROR),
        (w.frame(w.DATA, w.END_STREAM, 7, b"\x00\x00\x00\x00\x00"), w.PROTOCOL_ERROR),
        (w.frame(w.HEADERS, w.END_HEADERS, 1, b"\xff\x00"), w.COMPRESSION_ERROR),
        (w.frame(w.HEADERS, w.END_HEADERS, 2, b"\x83"), w.PROTOCOL_ERROR),
    ],
    ids=["short-window-update", "data-on-an-idle-stream", "bad-hpack-index", "even-stream-id"],
)
def test_a_protocol_error_ends_that_connection_with_goaway_and_others_are_served(
    raw: RawClient, server: GrpcHandle, frame: bytes, code: int
) -> None:
    raw.send(frame)
    goaway = raw.until(w.GOAWAY)
    assert goaway is not None and int.from_bytes(goaway[3][4:8], "big") == code
    assert raw.frame() is None  # then the server closed the connection
    with _channel(server.port) as channel:
        assert _stub(channel).ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live


def test_a_client_that_is_not_http2_is_disconnected(server: GrpcHandle) -> None:
    client = RawClient(server.port)
    client.send(b"GET / HTTP/1.1\r\nHost: kiln\r\n\r\n")
    while client.frame() is not None:  # whatever came before, the connection ends
        pass
    client.close()
    with _channel(server.port) as channel:
        assert _stub(channel).ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live


def test_a_connection_that_never_begins_http2_is_closed_and_one_that_did_is_kept(
    server: GrpcHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(grpc_h2, "HANDSHAKE_TIMEOUT_S", 0.2)
    began, silent, half = RawClient(server.port), RawClient(server.port), RawClient(server.port)
    try:
        began.send(w.PREFACE, w.settings_frame({}))
        half.send(w.PREFACE[:10])
        while silent.frame() is not None:  # the server's SETTINGS, then the close
            pass
        while half.frame() is not None:
            pass
        began.send(w.frame(w.PING, 0, 0, b"still-on"))  # its timer ran out too, long ago
        assert began.until(w.PING) == (w.PING, w.ACK, 0, b"still-on")
    finally:
        for client in (began, silent, half):
            client.close()


@pytest.mark.parametrize("content_type", ["text/plain", "application/grpc-web", "application/grpcx"])
def test_a_post_that_is_not_grpc_gets_415(raw: RawClient, content_type: str) -> None:
    """grpc-web frames its answers otherwise: its client would misread ours (grpc core refuses it too)."""
    headers = [(":method", "POST"), (":scheme", "http"), (":path", "/x"), ("content-type", content_type)]
    block = hpack.Encoder().encode(headers)
    raw.send(w.frame(w.HEADERS, w.END_HEADERS | w.END_STREAM, 1, block))
    headers = raw.until(w.HEADERS)
    assert hpack.Decoder().decode(headers[3]) == [(":status", "415")]


@pytest.mark.parametrize("content_type", ["application/grpc+proto", "application/grpc; charset=utf-8"])
def test_a_grpc_content_type_with_a_codec_or_parameters_is_served(raw: RawClient, content_type: str) -> None:
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/inference.GRPCInferenceService/ServerLive"),
        ("content-type", content_type),
    ]
    raw.send(w.frame(w.HEADERS, w.END_HEADERS, 1, hpack.Encoder().encode(headers)))
    raw.send(w.frame(w.DATA, w.END_STREAM, 1, grpc_message(b"")))
    head = raw.until(w.HEADERS)
    assert (":status", "200") in hpack.Decoder().decode(head[3])


@pytest.mark.parametrize("timeout", [None, "10S"])
def test_a_client_resetting_calls_in_a_loop_is_cut_off(raw: RawClient, server: GrpcHandle, timeout) -> None:
    """Calls with a timeout too: a reset long before it (a deadline's resets are free) is a rapid reset."""
    encoder = hpack.Encoder()
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/inference.GRPCInferenceService/ServerLive"),
        ("content-type", "application/grpc"),
        *([("grpc-timeout", timeout)] if timeout else []),
    ]
    frames = []
    for stream in range(
        1, 4 * h2_control.RESET_BURST, 2
    ):  # twice the burst: opened, reset before its message
        frames.append(w.frame(w.HEADERS, w.END_HEADERS, stream, encoder.encode(headers)))
        frames.append(w.rst_stream(stream, w.CANCEL))
    raw.send(*frames)
    goaway = raw.until(w.GOAWAY)
    assert goaway is not None and int.from_bytes(goaway[3][4:8], "big") == w.ENHANCE_YOUR_CALM
    with _channel(server.port) as channel:  # other connections are served
        assert _stub(channel).ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live


def test_a_call_arriving_a_few_bytes_at_a_time_is_answered(server: GrpcHandle) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    wire = b"".join(
        (
            w.PREFACE,
            w.settings_frame({}),
            w.frame(w.HEADERS, w.END_HEADERS, 1, hpack.Encoder().encode(call_headers())),
            w.frame(w.DATA, w.END_STREAM, 1, grpc_message(doubling_request(x).SerializeToString())),
        )
    )
    client = RawClient(server.port)
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for at in range(0, len(wire), 7):
            client.send(wire[at : at + 7])
        data = client.until(w.DATA)
        assert data is not None and data[2] == 1
        reply = service_pb2.ModelInferResponse.FromString(data[3][5:])
        np.testing.assert_array_equal(_doubled(reply, x.shape), x * 2)
    finally:
        client.close()


def test_a_client_that_stops_reading_is_no_longer_read_and_is_answered_in_full_once_it_reads(
    server: GrpcHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    paused = threading.Event()
    pause = grpc_h2.Connection.pause_writing

    def recording(self: grpc_h2.Connection) -> None:
        paused.set()
        pause(self)

    monkeypatch.setattr(grpc_h2.Connection, "pause_writing", recording)
    x = np.random.default_rng(1).standard_normal((8_000, 3)).astype(np.float32)  # ~96 KB each way
    message = grpc_message(doubling_request(x).SerializeToString())
    calls, encoder = 120, hpack.Encoder()  # ~11.5 MB of answers: more than the kernel buffers hold
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    client.connect(("127.0.0.1", server.port))
    raw = RawClient.__new__(RawClient)
    raw.sock, raw.data = client, b""
    frames = [
        w.PREFACE,
        w.settings_frame({w.INITIAL_WINDOW_SIZE: w.MAX_WINDOW}),
        w.window_update(0, w.MAX_WINDOW - w.DEFAULT_WINDOW),
        *(
            w.frame(w.HEADERS, w.END_HEADERS, s, encoder.encode(call_headers()))
            + w.frame(w.DATA, w.END_STREAM, s, message)
            for s in range(1, 2 * calls, 2)
        ),
    ]
    sender = threading.Thread(target=raw.send, args=frames, daemon=True)  # blocks once it is not read
    try:
        sender.start()
        assert paused.wait(30), "the server never saw its writes back up"
        bodies: dict[int, bytes] = {}
        ended = 0
        while ended < calls:  # now read: every call is answered, whole
            kind, flags, stream, payload = raw.frame()
            if kind == w.DATA:
                bodies[stream] = bodies.get(stream, b"") + payload
            ended += kind == w.HEADERS and bool(flags & w.END_STREAM)
        sender.join(30)
        assert not sender.is_alive(), "the server did not read again once its answers were read"
        assert sorted(bodies) == list(range(1, 2 * calls, 2))
        for body in bodies.values():
            reply = service_pb2.ModelInferResponse.FromString(body[5:])
            np.testing.assert_array_equal(_doubled(reply, x.shape), x * 2)
    finally:
        client.close()
