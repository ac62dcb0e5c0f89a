"""Kiln's gRPC server ends a call whose request does not arrive in time (serving/protocol/h2_watch.py):
at its client's deadline (``grpc-timeout``) or when its DATA pauses longer than the read timeout, with
DEADLINE_EXCEEDED and the connection serving on; a request that keeps arriving, or one the server
itself stopped reading, is never cut. A frame left unfinished over the read timeout, or a header block
not whole within it, ends the connection. Once the request has arrived the call is held to its
deadline until its answer has left (serving/protocol/h2_calls.py), as grpc core's servers hold it. Each
test but the one over a socket drives one connection in memory on a clock that moves only when the
test moves it (tests/h2_client.py), so no test depends on the machine's pace."""

from __future__ import annotations

from collections.abc import Iterator

import hpack
import numpy as np
import pytest

from serving.protocol import h2_wire as w
from serving.protocol.grpc_server import start_grpc_server
from tests.h2_client import (
    MESSAGE,
    Harness,
    RawClient,
    answer,
    call_end,
    call_headers,
    doubling_request,
    goaway_code,
    grpc_message,
    rst_code,
)
from tests.test_grpc import FakeBackend, LoopThread

READ_TIMEOUT = 0.3
SEND_TIMEOUT = 2.0
DEADLINE_EXCEEDED = "4"


@pytest.fixture
def h2() -> Iterator[Harness]:
    harness = Harness(read_timeout_s=READ_TIMEOUT, send_timeout_s=SEND_TIMEOUT)
    harness.frames()  # the server's SETTINGS and its ack of ours
    yield harness
    harness.close()


def _ended(h2: Harness, stream: int, after: float = READ_TIMEOUT) -> tuple[str, str, list[int]]:
    """How the server ends ``stream`` once ``after`` seconds pass (and not a moment before): its
    grpc-status, grpc-message and the RST_STREAM codes."""
    h2.advance(after * 0.99)
    assert stream in h2.connection.calls, "ended early"
    h2.advance(after * 0.02)
    assert stream not in h2.connection.calls
    frames = h2.frames()
    _, _, trailers = answer(frames, stream)
    resets = [rst_code(frame) for frame in frames if frame[0] == w.RST_STREAM and frame[2] == stream]
    return trailers["grpc-status"], trailers.get("grpc-message", ""), resets


def _still_serves(h2: Harness, stream: int) -> None:
    h2.send(h2.call(stream, MESSAGE))
    _, _, trailers = answer(h2.frames(), stream)
    assert trailers["grpc-status"] == "0"


def test_a_call_not_whole_by_its_deadline_ends_deadline_exceeded(h2: Harness) -> None:
    h2.send(h2.headers(1, call_headers(**{"grpc-timeout": "50m"})), w.frame(w.DATA, 0, 1, MESSAGE[:10]))
    assert 1 in h2.connection.calls  # held while it may still arrive
    status, message, resets = _ended(h2, 1, after=0.05)
    # trailers-only, then RST_STREAM(NO_ERROR): the client's half was still open (RFC 9113 section 8.1)
    assert (status, message, resets) == (DEADLINE_EXCEEDED, "Deadline Exceeded", [w.NO_ERROR])
    assert not h2.connection.partial
    _still_serves(h2, 3)


@pytest.mark.parametrize("sent", ["headers only", "some of the message"])
def test_a_call_whose_request_pauses_past_the_read_timeout_ends(h2: Harness, sent: str) -> None:
    frames = [h2.headers(1, call_headers())]
    if sent != "headers only":
        frames.append(w.frame(w.DATA, 0, 1, MESSAGE[:10]))
    h2.send(*frames)
    status, message, _ = _ended(h2, 1)
    assert (status, message) == (DEADLINE_EXCEEDED, f"request message not received within {READ_TIMEOUT:g} s")
    _still_serves(h2, 3)


def test_a_request_that_keeps_arriving_is_answered_however_long_it_takes(h2: Harness) -> None:
    """The allowance is between DATA frames: a message sent a byte nine tenths of the allowance apart,
    over seven times the allowance in all, is read whole and answered."""
    h2.send(h2.headers(1, call_headers()))
    pieces = [MESSAGE[:-8], *(MESSAGE[at : at + 1] for at in range(len(MESSAGE) - 8, len(MESSAGE)))]
    for piece in pieces[:-1]:
        h2.send(w.frame(w.DATA, 0, 1, piece))
        h2.advance(READ_TIMEOUT * 0.9)  # the client's pace
    h2.send(w.frame(w.DATA, w.END_STREAM, 1, pieces[-1]))
    _, _, trailers = answer(h2.frames(), 1)
    assert trailers["grpc-status"] == "0"


def test_a_call_the_server_stopped_reading_is_not_cut(h2: Harness) -> None:
    """While the client does not read the server's answers the server does not read it (back-pressure),
    so the calls it was sending wait on the server, not on the client: their clock stops."""
    h2.send(h2.headers(1, call_headers()))
    h2.connection.pause_writing()
    for _ in range(3):
        h2.advance(READ_TIMEOUT)
    assert 1 in h2.connection.calls
    h2.connection.resume_writing()
    h2.send(w.frame(w.DATA, w.END_STREAM, 1, MESSAGE))
    _, _, trailers = answer(h2.frames(), 1)
    assert trailers["grpc-status"] == "0"


def test_a_call_the_client_resets_is_forgotten_by_the_watch(h2: Harness) -> None:
    h2.send(h2.headers(1, call_headers()), w.frame(w.DATA, 0, 1, MESSAGE[:10]))
    h2.send(w.rst_stream(1, w.CANCEL))
    assert not h2.connection.partial
    h2.advance(READ_TIMEOUT)
    assert h2.connection.watch is None  # it fired, found nothing, and stays off
    assert [frame for frame in h2.frames() if frame[2] == 1] == []


def test_empty_data_frames_neither_pile_up_nor_keep_a_call_alive(h2: Harness) -> None:
    """An empty DATA frame without END_STREAM carries nothing: it is not held, and it is not the
    progress the read timeout waits for (a stream of them used to grow the call's parts without end)."""
    h2.send(h2.headers(1, call_headers()))
    for _ in range(3):
        h2.send(w.frame(w.DATA, 0, 1, b"") * 1000)
        assert h2.connection.calls[1].parts == []
        h2.advance(READ_TIMEOUT / 4)
    status, _, _ = _ended(h2, 1, after=READ_TIMEOUT / 4)
    assert status == DEADLINE_EXCEEDED
    _still_serves(h2, 3)


def test_a_frame_arriving_in_pieces_keeps_its_call_alive(h2: Harness) -> None:
    """A DATA frame's bytes are progress before the frame is whole (once its head has named the call):
    its call is not cut while they come, however long the frame takes."""
    h2.send(h2.headers(1, call_headers()))
    data = w.frame(w.DATA, w.END_STREAM, 1, MESSAGE)
    pieces = [data[:9], *(data[at : at + 4] for at in range(9, len(data), 4))]
    for piece in pieces[:-1]:
        h2.send(piece)
        h2.advance(READ_TIMEOUT * 0.9)
    assert len(pieces) > 8  # many times the allowance in all
    h2.send(pieces[-1])
    _, _, trailers = answer(h2.frames(), 1)
    assert trailers["grpc-status"] == "0"


def _closed(h2: Harness, after: float) -> str:
    """The connection is closed once ``after`` seconds pass, not before: the GOAWAY's message."""
    h2.advance(after * 0.99)
    assert not h2.transport.closed, "closed early"
    h2.advance(after * 0.02)
    assert h2.transport.closed
    goaway = [frame for frame in h2.frames() if frame[0] == w.GOAWAY]
    assert len(goaway) == 1 and goaway_code(goaway[0]) == w.PROTOCOL_ERROR
    return goaway[0][3][8:].decode()


def test_a_frame_left_unfinished_ends_the_connection(h2: Harness) -> None:
    h2.send(w.frame(w.PING, 0, 0, b"8 bytes!")[:12])
    assert _closed(h2, READ_TIMEOUT) == f"a frame not received whole within {READ_TIMEOUT:g} s"


def test_a_header_block_left_open_ends_the_connection(h2: Harness) -> None:
    """While a header block is open nothing else may arrive on the connection (RFC 9113 section 6.10):
    one left open would hold the connection for ever."""
    h2.send(h2.headers(1, call_headers(), flags=0))
    message = _closed(h2, READ_TIMEOUT)
    assert message == f"a header block not received whole within {READ_TIMEOUT:g} s"


def test_a_header_block_must_be_whole_within_the_read_timeout_however_it_trickles(h2: Harness) -> None:
    """Its CONTINUATION frames are progress, but the block's allowance runs from its first bytes on,
    as an HTTP/1 head's does: a block trickled in empty frames is cut at the read timeout."""
    h2.send(h2.headers(1, call_headers(), flags=0))
    for _ in range(3):
        h2.advance(READ_TIMEOUT / 4)
        h2.send(w.frame(w.CONTINUATION, 0, 1, b""))
    assert _closed(h2, READ_TIMEOUT / 4).startswith("a header block not received whole")


def test_a_header_block_and_a_frame_the_server_stopped_reading_are_not_cut(h2: Harness) -> None:
    h2.send(h2.headers(1, call_headers(), flags=0))
    h2.connection.pause_writing()
    for _ in range(3):
        h2.advance(READ_TIMEOUT)
    assert not h2.transport.closed
    h2.connection.resume_writing()
    h2.send(w.frame(w.CONTINUATION, w.END_HEADERS, 1, b""), w.frame(w.DATA, w.END_STREAM, 1, MESSAGE))
    _, _, trailers = answer(h2.frames(), 1)
    assert trailers["grpc-status"] == "0"


def test_a_shorter_deadline_opened_later_is_kept(h2: Harness) -> None:
    """The watch is armed for the first call to expire; a call opened after it with an earlier deadline
    is ended at its own deadline, not when the watch would have woken for the first."""
    h2.send(h2.headers(1, call_headers()))  # ends at the read timeout
    h2.advance(READ_TIMEOUT / 10)
    h2.send(h2.headers(3, call_headers(**{"grpc-timeout": "50m"})))
    status, message, _ = _ended(h2, 3, after=0.05)
    assert (status, message) == (DEADLINE_EXCEEDED, "Deadline Exceeded")
    assert 1 in h2.connection.calls


def test_calls_expiring_one_by_one_are_each_ended_on_time(h2: Harness) -> None:
    """Many half-sent calls with deadlines a millisecond apart: each ends at its own."""
    h2.send(*(h2.headers(1 + 2 * k, call_headers(**{"grpc-timeout": f"{100 + k}m"})) for k in range(200)))
    start = h2.now
    for k in range(200):
        h2.advance(start + 0.1 + k * 0.001 + 0.0005 - h2.now)  # half a millisecond past the k-th
        assert 1 + 2 * k not in h2.connection.calls
        assert k == 199 or 3 + 2 * k in h2.connection.calls
    assert not h2.connection.partial


def test_a_client_that_reads_none_of_its_answers_is_cut_at_the_send_timeout(h2: Harness) -> None:
    """While the client does not read, the server does not read it and its calls' clocks stop (above):
    that pause is bounded, or a client could hold half-sent calls, and the bytes they hold, for ever."""
    h2.send(h2.headers(1, call_headers()), w.frame(w.DATA, 0, 1, MESSAGE[:10]))
    h2.transport.buffered = 100_000  # answers the client is not taking
    h2.connection.pause_writing()
    h2.advance(SEND_TIMEOUT * 0.99)
    assert not h2.transport.closed and 1 in h2.connection.calls
    h2.advance(SEND_TIMEOUT * 0.02)
    assert h2.transport.aborted


def test_a_client_reading_slowly_is_never_cut(h2: Harness) -> None:
    """The allowance runs between two takes of the client, as nginx's send_timeout does."""
    h2.send(h2.headers(1, call_headers()))
    h2.transport.buffered = 100_000
    h2.connection.pause_writing()
    for _ in range(5):  # a little taken in the middle of each allowance
        h2.advance(SEND_TIMEOUT / 2)
        h2.transport.buffered -= 1_000
        h2.advance(SEND_TIMEOUT / 2)
    assert not h2.transport.closed
    h2.connection.resume_writing()
    h2.advance(SEND_TIMEOUT * 3)  # back to the read timeout: the call, not the connection, ends
    assert not h2.transport.closed and 1 not in h2.connection.calls


def test_answers_waiting_for_window_a_client_never_grants_are_cut_at_the_send_timeout(h2: Harness) -> None:
    """A client that grants no window never fills the socket's buffers, so the send watch above never
    arms; its answers, and the request bytes they hold in the body budget, would wait for ever. They
    wait for their own calls' windows, so those calls are reset; the connection serves on (a connection
    whose answers wait for its own window is aborted: tests/test_h2hostile_a_stalled_windows.py)."""
    h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 0}), h2.call(1, MESSAGE), h2.call(3, MESSAGE))
    assert set(h2.connection.parked) == {1, 3}  # answered, waiting for window
    h2.frames()
    h2.advance(SEND_TIMEOUT * 0.99)
    assert not h2.frames() and set(h2.connection.parked) == {1, 3}
    h2.advance(SEND_TIMEOUT * 0.02)
    assert [(f[0], f[2], rst_code(f)) for f in h2.frames()] == [
        (w.RST_STREAM, 1, w.CANCEL),
        (w.RST_STREAM, 3, w.CANCEL),
    ]
    assert not h2.transport.aborted and not h2.connection.calls


def test_answers_a_client_grants_window_for_slowly_are_never_cut(h2: Harness) -> None:
    h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 0}), h2.call(1, MESSAGE))
    for _ in range(5):  # a few bytes granted in the middle of each allowance
        h2.advance(SEND_TIMEOUT / 2)
        h2.send(w.window_update(1, 3))
        h2.advance(SEND_TIMEOUT / 2)
    assert not h2.transport.aborted and 1 in h2.connection.parked
    h2.send(w.window_update(1, 1 << 20))  # the rest: the answer leaves and the watch stands down
    _, _, trailers = answer(h2.frames(), 1)
    assert trailers["grpc-status"] == "0" and h2.connection.window_watch is None
    h2.advance(SEND_TIMEOUT * 3)
    assert not h2.transport.aborted
    h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: w.DEFAULT_WINDOW}))
    _still_serves(h2, 3)


# --- once the request has arrived: the call is held to its deadline until its answer has left ---


@pytest.mark.parametrize("server", ["kiln", "grpcio"])
def test_a_call_whose_deadline_passes_while_it_runs_ends_deadline_exceeded_and_its_work_is_cancelled(
    loop: LoopThread, server: str
) -> None:
    """Not every client keeps its own deadline: the server does, as grpc core's servers do, whether or
    not the servicer bounds its work (``hang`` never answers)."""
    backend = FakeBackend()
    handle = loop.run(start_grpc_server(backend, "127.0.0.1", 0, server=server))
    client = RawClient(handle.port)
    try:
        headers = [(":authority", "kiln"), *call_headers(te="trailers", grpc_timeout="100m")]
        message = grpc_message(
            doubling_request(np.ones((1, 3), np.float32), model="hang").SerializeToString()
        )
        client.send(
            w.PREFACE,
            w.settings_frame({}),
            w.frame(w.HEADERS, w.END_HEADERS, 1, hpack.Encoder().encode(headers)),
            w.frame(w.DATA, w.END_STREAM, 1, message),
        )
        trailers = call_end(client, 1)
        assert (trailers["grpc-status"], trailers["grpc-message"]) == (DEADLINE_EXCEEDED, "Deadline Exceeded")
        assert backend.abandoned.wait(10)
    finally:
        client.close()
        loop.run(handle.stop(0.5))


def test_a_call_whose_deadline_has_passed_when_it_arrives_is_not_served(h2: Harness) -> None:
    h2.send(h2.call(1, MESSAGE, grpc_timeout="0n"))
    _, _, trailers = answer(h2.frames(), 1)
    assert trailers["grpc-status"] == DEADLINE_EXCEEDED
    assert (
        h2.server.methods[b"/inference.GRPCInferenceService/ModelInfer"][0].__self__.backend.last_request
        is None
    )
    _still_serves(h2, 3)


def test_an_answer_still_waiting_for_window_at_the_deadline_is_reset(h2: Harness) -> None:
    """Its headers have left, so the call ends with RST_STREAM(CANCEL), not a status after a cut message,
    and the answer stops waiting for window the client may never grant."""
    h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 8}))
    h2.send(h2.call(1, MESSAGE, grpc_timeout="50m"))
    assert 1 in h2.connection.parked  # its message waits for window
    h2.advance(0.049)
    assert 1 in h2.connection.calls
    h2.advance(0.002)
    assert 1 not in h2.connection.calls and not h2.connection.parked
    resets = [rst_code(frame) for frame in h2.frames() if frame[0] == w.RST_STREAM and frame[2] == 1]
    assert resets == [w.CANCEL]


def test_a_call_answered_before_its_deadline_leaves_no_timer_behind(h2: Harness) -> None:
    h2.send(h2.call(1, MESSAGE, grpc_timeout="1S"))
    _, _, trailers = answer(h2.frames(), 1)
    assert trailers["grpc-status"] == "0"
    assert all(handle.cancelled() for handle in h2.loop._scheduled)  # type: ignore[attr-defined]
    h2.advance(2.0)
    assert h2.frames() == []
