"""A ModelStreamInfer message begun and then left unfinished ends its stream DEADLINE_EXCEEDED after
the read timeout, its bytes given back to the body budget, as a unary call's half-sent request ends:
it held them for the connection's life, so a few such streams kept the budget full and every other
request, HTTP and gRPC, refused. Pauses between whole messages stay the client's to take."""

from __future__ import annotations

from serving.protocol import h2_wire as w
from serving.protocol.limits import BodyBudget
from tests.h2_client import MESSAGE, MODEL_STREAM_INFER, Harness, answer, call_headers, stream_parts

BEGUN = b"\0" + (3 << 20).to_bytes(4, "big") + bytes(900_000)  # 900 KB of a 3 MiB message


def _harness(budget: BodyBudget) -> Harness:
    h2 = Harness(budget=budget, read_timeout_s=30.0, max_message_bytes=4 << 20)
    h2.frames()
    return h2


def test_a_stream_message_left_unfinished_ends_the_stream_and_gives_its_bytes_back() -> None:
    budget = BodyBudget(1 << 30)
    h2 = _harness(budget)
    try:
        h2.send(
            h2.headers(1, call_headers(MODEL_STREAM_INFER)),
            w.frame(w.DATA, 0, 1, MESSAGE),  # answered
            w.frame(w.DATA, 0, 1, BEGUN),  # then silence
        )
        assert budget.used >= len(BEGUN)
        h2.advance(29.0)
        assert 1 in h2.connection.calls  # within the read timeout: still open
        h2.send(w.frame(w.DATA, 0, 1, bytes(1000)))  # more of it: the clock starts again
        h2.advance(29.0)
        assert 1 in h2.connection.calls
        h2.advance(2.0)
        blocks, body = stream_parts(h2.frames(), 1)
        assert body, "the first message's answer"
        assert blocks[-1]["grpc-status"] == "4", blocks  # DEADLINE_EXCEEDED
        assert "not received within 30 s" in blocks[-1]["grpc-message"]
        assert 1 not in h2.connection.calls and budget.used == 0
        h2.send(h2.call(3, MESSAGE))  # the connection serves on
        _, message, trailers = answer(h2.frames(), 3)
        assert trailers["grpc-status"] == "0" and message, trailers
    finally:
        h2.close()


def test_a_stream_idle_between_whole_messages_is_not_ended() -> None:
    budget = BodyBudget(1 << 30)
    h2 = _harness(budget)
    try:
        h2.send(h2.headers(1, call_headers(MODEL_STREAM_INFER)), w.frame(w.DATA, 0, 1, MESSAGE))
        h2.advance(600.0)
        assert 1 in h2.connection.calls
        h2.send(w.frame(w.DATA, 0, 1, MESSAGE[:20]), w.frame(w.DATA, 0, 1, MESSAGE[20:]))
        h2.advance(600.0)
        h2.send(w.frame(w.DATA, w.END_STREAM, 1, MESSAGE))
        blocks, _ = stream_parts(h2.frames(), 1)
        assert blocks[-1]["grpc-status"] == "0", blocks
    finally:
        h2.close()
