"""A request whose header list passes the limit the server advertises (SETTINGS_MAX_HEADER_LIST_SIZE)
ends that call alone, RESOURCE_EXHAUSTED, as grpc core ends it: its block is decoded all the same, so
the connection's HPACK table stays in step and the calls beside it on the connection (a proxy's
upstream carries many clients' calls) are served. Ending the connection instead failed every call in
flight on it for one client's oversized metadata."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.protocol import h2_control
from serving.protocol import h2_wire as w
from serving.protocol.grpc_server import start_grpc_server
from serving.protocol.h2_requests import MAX_HEADER_LIST
from tests.h2_client import (
    MESSAGE,
    MODEL_STREAM_INFER,
    Harness,
    answer,
    call_headers,
    connected,
    doubling_request,
    goaway_code,
    rst_code,
)
from tests.test_grpc import LoopThread
from tests.test_grpc_h2 import BlockingBackend

RESOURCE_EXHAUSTED = "8"
BIG = ("x-debug-trace", "t" * (MAX_HEADER_LIST + 1000))  # one field past the whole list's limit


@pytest.fixture
def h2() -> Iterator[Harness]:
    with connected() as harness:
        yield harness


def _answered(frames: list, stream: int) -> None:
    headers, message, trailers = answer(frames, stream)
    assert headers[":status"] == "200" and trailers["grpc-status"] == "0", (headers, trailers)
    reply = service_pb2.ModelInferResponse.FromString(message)
    doubled = np.frombuffer(reply.raw_output_contents[0], np.float32)
    np.testing.assert_array_equal(doubled, np.arange(6, dtype=np.float32) * 2)


def _split(stream: int, block: bytes, flags: int = 0) -> bytes:
    """``block`` as a HEADERS frame (``flags`` on it) and CONTINUATION frames of 16 KiB at most."""
    parts = [block[at : at + 16_384] for at in range(0, len(block), 16_384)]
    frames = []
    for at, part in enumerate(parts):
        kind, first = (w.HEADERS, flags) if at == 0 else (w.CONTINUATION, 0)
        frames.append(w.frame(kind, first | (w.END_HEADERS if at == len(parts) - 1 else 0), stream, part))
    return b"".join(frames)


def test_an_oversized_header_list_ends_its_call_alone_and_the_table_stays_in_step(h2: Harness) -> None:
    h2.send(h2.headers(1, call_headers()))  # a call in flight: its message not sent yet
    # indexed after the big field (the client's table keeps it): the next call names it by index
    oversized = h2.encoder.encode([*call_headers(), BIG, ("x-tenant", "acme")])
    h2.send(_split(3, oversized))
    frames = h2.frames()
    assert not h2.transport.closed and all(f[0] != w.GOAWAY for f in frames), frames
    _, _, status = answer(frames, 3)
    assert status["grpc-status"] == RESOURCE_EXHAUSTED, status
    assert f"header list above {MAX_HEADER_LIST} bytes" in status["grpc-message"]
    assert [(f[2], rst_code(f)) for f in frames if f[0] == w.RST_STREAM] == [(3, w.NO_ERROR)]
    h2.send(w.frame(w.DATA, w.END_STREAM, 1, MESSAGE))  # the call in flight is answered
    _answered(h2.frames(), 1)
    h2.send(h2.call(5, MESSAGE, x_tenant="acme"))  # its headers name the table's entries
    _answered(h2.frames(), 5)


def test_a_stream_opened_with_an_oversized_list_ends_without_a_reset_when_its_client_had_ended(
    h2: Harness,
) -> None:
    h2.send(_split(1, h2.encoder.encode([*call_headers(MODEL_STREAM_INFER), BIG]), w.END_STREAM))
    frames = h2.frames()
    assert answer(frames, 1)[2]["grpc-status"] == RESOURCE_EXHAUSTED
    assert all(f[0] not in (w.RST_STREAM, w.GOAWAY) for f in frames), frames
    h2.send(h2.call(3, MESSAGE))
    _answered(h2.frames(), 3)


def test_oversized_trailers_end_their_call_alone(h2: Harness) -> None:
    h2.send(h2.headers(1, call_headers()), w.frame(w.DATA, 0, 1, MESSAGE))
    h2.send(_split(1, h2.encoder.encode([BIG]), w.END_STREAM))
    frames = h2.frames()
    assert answer(frames, 1)[2]["grpc-status"] == RESOURCE_EXHAUSTED
    assert not h2.transport.closed
    h2.send(h2.call(3, MESSAGE))
    _answered(h2.frames(), 3)


def test_oversized_lists_in_a_loop_spend_the_reset_budget(
    h2: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h2_control, "RESET_RATE", 0.0)  # no refill while the test runs: an exact count
    bomb = [("x-a", "v" * 4000)] + [("x-a", "v" * 4000)] * 20  # one table entry, named 20 times by index
    frames = [h2.headers(s, [*call_headers(), *bomb]) for s in range(1, 4 * h2_control.RESET_BURST, 2)]
    h2.send(*frames)
    written = h2.frames()
    assert written[-1][0] == w.GOAWAY and goaway_code(written[-1]) == w.ENHANCE_YOUR_CALM
    assert len([f for f in written if f[0] == w.RST_STREAM]) == h2_control.RESET_BURST


def test_a_block_of_more_fields_than_any_list_within_the_limit_still_ends_the_connection() -> None:
    """Decoding a block to its end costs a step a field: one of more fields than a list within the
    limit can hold (each counts 32 bytes) is refused at that count, as the list limit once bounded it."""
    decoder = w.HeaderDecoder(max_list_size=MAX_HEADER_LIST)
    with pytest.raises(w.H2Error, match="fields in one header block") as caught:
        decoder.decode_checked(b"\x82" * (MAX_HEADER_LIST // 32 + 1))
    assert caught.value.code == w.COMPRESSION_ERROR
    headers, problem = decoder.decode_checked(b"\x82" * (MAX_HEADER_LIST // 32))  # 42 bytes each: over
    assert problem is decoder.oversized and sum(len(n) + len(v) + 32 for n, v in headers) <= MAX_HEADER_LIST


def test_grpcio_gets_resource_exhausted_for_its_oversized_metadata_and_its_call_in_flight_its_answer() -> (
    None
):
    """What a grpcio channel sees: its call with 70 KB of metadata RESOURCE_EXHAUSTED, the call it has in
    flight beside it answered (it was UNAVAILABLE "GOAWAY received", and UNAVAILABLE is what clients
    retry: the retry closed the connection again)."""
    loop, backend = LoopThread(), BlockingBackend()
    handle = loop.run(start_grpc_server(backend, "127.0.0.1", 0, max_message_bytes=1 << 20))
    channel = grpc.insecure_channel(f"127.0.0.1:{handle.port}")
    try:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = doubling_request(np.arange(6, dtype=np.float32).reshape(2, 3))
        in_flight = stub.ModelInfer.future(request, timeout=30)
        assert backend.arrived.wait(30)  # held in the backend until released
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, metadata=[("x-big", "t" * 70_000)], timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value
        assert "header list above" in caught.value.details()

        async def release() -> None:
            backend.release.set()

        loop.run(release())
        assert in_flight.result(timeout=30).model_name == "double"
    finally:
        channel.close()
        loop.run(handle.stop(1.0))
        loop.close()
