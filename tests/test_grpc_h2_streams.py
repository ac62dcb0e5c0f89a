"""Kiln's gRPC server streams ModelStreamInfer (perf_analyzer --streaming, tritonclient's start_stream):
each message answered as it completes however the frames cut it, answers within flow control, and a
stream's end by its client, its deadline, a reset, a refused message or the body budget. Each test
drives one connection in memory (tests/h2_client.py)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.protocol import h2_wire as w
from serving.protocol.h2_streams import CUT_MESSAGE, QUEUED_MESSAGE_BYTES, SHUTTING_DOWN
from serving.protocol.limits import BodyBudget
from tests.h2_client import (
    MODEL_STREAM_INFER,
    Harness,
    call_headers,
    connected,
    doubling_request,
    grpc_message,
    stream_parts,
)

X = np.arange(6, dtype=np.float32).reshape(2, 3)


def _request(i: int, model: str = "double") -> bytes:
    request = doubling_request(X + i, model=model)
    request.id = f"r{i}"
    return request.SerializeToString()


def _open(h2: Harness, stream: int = 1, **extra: str) -> None:
    h2.send(h2.headers(stream, call_headers(MODEL_STREAM_INFER, **extra)))


def _data(stream: int, data: bytes, end: bool = False) -> bytes:
    return w.frame(w.DATA, w.END_STREAM if end else 0, stream, data)


def _replies(frames: list, stream: int) -> tuple[list[dict], list[service_pb2.ModelStreamInferResponse]]:
    """The header blocks the server sent on ``stream`` and the messages of its DATA, in order."""
    blocks, body = stream_parts(frames, stream)
    replies, at = [], 0
    while at < len(body):
        size = int.from_bytes(body[at + 1 : at + 5], "big")
        replies.append(service_pb2.ModelStreamInferResponse.FromString(body[at + 5 : at + 5 + size]))
        at += 5 + size
    assert at == len(body), "a message cut short"
    return blocks, replies


def _check_doubled(reply: service_pb2.ModelStreamInferResponse) -> None:
    assert not reply.error_message, reply.error_message
    i = int(reply.infer_response.id[1:])
    got = np.frombuffer(reply.infer_response.raw_output_contents[0], np.float32).reshape(X.shape)
    np.testing.assert_array_equal(got, 2 * (X + i))


@pytest.fixture
def h2() -> Iterator[Harness]:
    with connected() as harness:
        yield harness


def test_each_message_is_answered_as_it_completes_however_the_frames_cut_them(h2: Harness) -> None:
    """Two messages in one DATA frame, a third across frames of 7 bytes: three answers while the
    stream stays open (the response headers once), then the trailers when the client ends its half."""
    _open(h2)
    h2.send(_data(1, grpc_message(_request(0)) + grpc_message(_request(1))))
    h2.send(_data(1, grpc_message(_request(2))), chunk=7)
    blocks, replies = _replies(h2.frames(), 1)
    assert [b[":status"] for b in blocks] == ["200"]  # no trailers yet: the stream goes on
    assert [r.infer_response.id for r in replies] == ["r0", "r1", "r2"]
    for reply in replies:
        _check_doubled(reply)
    h2.send(_data(1, b"", end=True))
    blocks, replies = _replies(h2.frames(), 1)
    assert replies == [] and blocks == [{"grpc-status": "0"}]
    assert 1 not in h2.connection.calls


def test_a_failing_request_is_answered_with_its_error_and_the_stream_goes_on(h2: Harness) -> None:
    _open(h2)
    h2.send(_data(1, grpc_message(_request(0, model="nope")) + grpc_message(_request(1)), end=True))
    blocks, replies = _replies(h2.frames(), 1)
    assert blocks[-1]["grpc-status"] == "0"
    failed = [r for r in replies if r.error_message]
    assert len(replies) == 2 and len(failed) == 1 and "nope" in failed[0].error_message
    _check_doubled(next(r for r in replies if not r.error_message))


def test_a_stream_with_no_message_ends_with_its_status_alone(h2: Harness) -> None:
    h2.send(h2.headers(1, call_headers(MODEL_STREAM_INFER), flags=w.END_HEADERS | w.END_STREAM))
    blocks, replies = _replies(h2.frames(), 1)
    assert replies == [] and len(blocks) == 1  # trailers-only
    assert blocks[0][":status"] == "200" and blocks[0]["grpc-status"] == "0"


def test_the_clients_trailers_end_its_half_of_the_stream(h2: Harness) -> None:
    _open(h2)
    h2.send(_data(1, grpc_message(_request(0))))
    h2.send(h2.headers(1, [("x-trailer", "1")], flags=w.END_HEADERS | w.END_STREAM))
    blocks, replies = _replies(h2.frames(), 1)
    assert len(replies) == 1 and blocks[-1]["grpc-status"] == "0"


def test_answers_wait_for_the_clients_window_and_the_trailers_follow_the_last() -> None:
    """A client granting 10 bytes a stream: the answers leave as it grants more, whole and in order,
    and the trailers only after the last byte of the last."""
    with connected() as h2:
        h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 10}))
        _open(h2)
        h2.send(_data(1, grpc_message(_request(0)) + grpc_message(_request(1)), end=True))
        frames = h2.frames()
        sent = sum(len(f[3]) for f in frames if f[0] == w.DATA)
        assert sent == 10 and not any(f[0] == w.HEADERS and f[1] & w.END_STREAM for f in frames)
        while 1 in h2.connection.calls:
            h2.send(w.window_update(1, 100))
            frames += h2.frames()
    blocks, replies = _replies(frames, 1)
    assert [r.infer_response.id for r in replies] == ["r0", "r1"] and blocks[-1]["grpc-status"] == "0"
    for reply in replies:
        _check_doubled(reply)


def test_a_request_stays_held_until_its_answer_has_left() -> None:
    """A client that stops reading its answers (no window) cannot make the server hold them without
    bound: each request's bytes stay in the body budget until its answer has left, so past the budget
    the stream is refused; the window granted, the answers leave and the budget empties."""
    message = grpc_message(_request(0))
    held = len(message) + QUEUED_MESSAGE_BYTES  # its bytes and its queue entry's
    budget = BodyBudget(3 * held)
    with connected(budget=budget) as h2:
        h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 0}))
        _open(h2)
        h2.send(_data(1, message * 3))
        assert budget.used == 3 * held  # answered, but nothing of the answers has left
        h2.send(w.window_update(1, 1 << 16))
        assert budget.used == 0
        _, replies = _replies(h2.frames(), 1)
        assert [r.infer_response.id for r in replies] == ["r0"] * 3
        _open(h2, stream=3)  # another stream, whose answers get no window
        h2.send(_data(3, message * 3))
        h2.send(_data(3, message))  # a fourth held request is past the budget: the stream is refused,
        h2.send(w.window_update(3, 1 << 16))  # its status after the answers owed, once they can leave
        blocks, replies = _replies(h2.frames(), 3)
        assert len(replies) == 3 and blocks[-1]["grpc-status"] == str(grpc.StatusCode.UNAVAILABLE.value[0])
        assert budget.used == 0 and 3 not in h2.connection.calls


def test_a_message_over_the_limit_ends_the_stream_and_the_connection_serves_on() -> None:
    with connected(max_message_bytes=200) as h2:
        _message_over_the_limit(h2)


def _message_over_the_limit(h2: Harness) -> None:
    _open(h2)
    h2.send(_data(1, grpc_message(_request(0))))
    h2.send(_data(1, grpc_message(b"\x00" * 300)[:100]))  # refused at its length, before its bytes
    blocks, replies = _replies(h2.frames(), 1)
    assert len(replies) == 1  # the one before it stays answered
    assert blocks[-1]["grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
    assert "larger than max" in blocks[-1]["grpc-message"]
    h2.send(h2.call(3, grpc_message(_request(5))))
    assert any(f[2] == 3 and f[0] == w.DATA for f in h2.frames())


def test_a_stream_ended_inside_a_message_fails_and_what_was_answered_stays(h2: Harness) -> None:
    _open(h2)
    h2.send(_data(1, grpc_message(_request(0))))
    h2.send(_data(1, grpc_message(_request(1))[:9], end=True))
    blocks, replies = _replies(h2.frames(), 1)
    assert len(replies) == 1
    assert blocks[-1]["grpc-status"] == str(grpc.StatusCode.INTERNAL.value[0])
    assert blocks[-1]["grpc-message"] == CUT_MESSAGE


def test_compressed_messages_on_a_stream_are_inflated(h2: Harness) -> None:
    _open(h2, grpc_encoding="gzip")
    h2.send(_data(1, grpc_message(gzip.compress(_request(4)), compressed=True), end=True))
    blocks, replies = _replies(h2.frames(), 1)
    assert len(replies) == 1 and blocks[-1]["grpc-status"] == "0"
    _check_doubled(replies[0])


def test_the_deadline_ends_an_open_stream_and_its_work_after_its_answers(h2: Harness) -> None:
    """A stream may idle between messages, but not past its deadline: answered ones stay answered,
    the request still running is cancelled, and the trailers say DEADLINE_EXCEEDED."""
    _open(h2, grpc_timeout="2S")
    h2.send(_data(1, grpc_message(_request(0))))
    h2.advance(1.0)  # idle, within the deadline
    h2.send(_data(1, grpc_message(_request(1, model="hang"))))
    task = h2.connection.calls[1].task
    h2.advance(1.5)
    blocks, replies = _replies(h2.frames(), 1)
    assert len(replies) == 1 and blocks[-1]["grpc-status"] == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
    assert 1 not in h2.connection.calls and task.done()


def test_a_reset_stream_cancels_its_work_and_gives_its_bytes_back() -> None:
    budget = BodyBudget(1 << 20)
    with connected(budget=budget) as h2:
        _open(h2)
        hanging = grpc_message(_request(0, model="hang"))
        h2.send(_data(1, hanging))
        assert budget.used == len(hanging) + QUEUED_MESSAGE_BYTES  # held while its answer is owed
        task = h2.connection.calls[1].task
        h2.send(w.rst_stream(1, w.CANCEL))
        assert task.done() and budget.used == 0


def test_a_streams_bytes_are_held_until_each_request_is_answered() -> None:
    """Each message holds its bytes in the body budget till its answer leaves; past the budget the
    stream ends UNAVAILABLE, and everything it held is given back."""
    message, hanging = grpc_message(_request(0)), grpc_message(_request(1, model="hang"))
    budget = BodyBudget(2 * (len(hanging) + QUEUED_MESSAGE_BYTES) + len(message) + QUEUED_MESSAGE_BYTES - 1)
    with connected(budget=budget) as h2:
        _open(h2)
        h2.send(_data(1, message + message))
        assert budget.used == 0  # both answered
        h2.send(_data(1, hanging * 2))
        assert budget.used == 2 * (len(hanging) + QUEUED_MESSAGE_BYTES)
        h2.send(_data(1, message))  # a third unanswered one does not fit
        blocks, replies = _replies(h2.frames(), 1)
        assert len(replies) == 2
        assert blocks[-1]["grpc-status"] == str(grpc.StatusCode.UNAVAILABLE.value[0])
        assert budget.used == 0 and 1 not in h2.connection.calls


def test_a_stopping_server_ends_each_stream_once_its_requests_are_answered(
    h2: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream idling at the stop ends at once (UNAVAILABLE: its client opens it again elsewhere);
    one with a request in flight gets that answer first, instead of holding the stop for its grace."""
    backend = h2.server.streams[MODEL_STREAM_INFER.encode()][0].__self__.backend
    gate, infer = asyncio.Event(), backend.infer

    async def held(request):  # noqa: ANN001, ANN202
        await gate.wait()
        return await infer(request)

    monkeypatch.setattr(backend, "infer", held)
    _open(h2, stream=1)
    _open(h2, stream=3)
    h2.send(_data(3, grpc_message(_request(7))))  # in flight until the gate opens
    h2.server.stopping = True  # what H2GrpcServer.stop does, then this:
    h2.connection.end_idle_streams()
    h2.advance(0.0)  # the loop turns: the connection's writes leave
    blocks, replies = _replies(h2.frames(), 1)
    assert replies == [] and blocks[-1]["grpc-status"] == str(grpc.StatusCode.UNAVAILABLE.value[0])
    assert blocks[-1]["grpc-message"] == SHUTTING_DOWN and 3 in h2.connection.calls
    gate.set()
    h2.advance(0.0)
    blocks, replies = _replies(h2.frames(), 3)
    assert [r.infer_response.id for r in replies] == ["r7"]
    assert blocks[-1]["grpc-status"] == str(grpc.StatusCode.UNAVAILABLE.value[0])
    assert not h2.connection.calls


def test_the_gateways_stop_does_not_wait_its_grace_for_a_client_idling_on_a_stream() -> None:
    """A real server and client: the stream answered, its client idle, the stop ends it at once and
    returns well before its grace (30 s); the client learns UNAVAILABLE."""
    import queue

    from serving.protocol.grpc_server import start_grpc_server
    from tests.test_grpc import FakeBackend, LoopThread

    loop = LoopThread()
    try:
        handle = loop.run(start_grpc_server(FakeBackend(), "127.0.0.1", 0, server="kiln"))
        outbox: queue.Queue = queue.Queue()
        with grpc.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            replies = stub.ModelStreamInfer(iter(outbox.get, None), timeout=60)
            outbox.put(doubling_request(X))
            assert not next(replies).error_message
            loop.run(handle.stop(30.0), timeout=10.0)  # TimeoutError: the stop waited for the idle stream
            with pytest.raises(grpc.RpcError) as ended:
                next(replies)
            outbox.put(None)
    finally:
        loop.close()
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
