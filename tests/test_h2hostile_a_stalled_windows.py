"""Kiln's HTTP/2 gRPC server when a client stops granting window to one call: that call alone is cut at
the send timeout, never the connection's other calls (a streaming client not reading one stream, its
channel's other calls in flight); a client that grants the connection no window still loses the
connection. Each test drives one connection in memory (tests/h2_client.py) on the harness's own clock."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from serving.protocol import h2_wire as w
from serving.protocol.limits import BodyBudget
from tests.h2_client import (
    MESSAGE,
    MODEL_STREAM_INFER,
    Harness,
    answer,
    call_headers,
    connected,
    doubling_request,
    grpc_message,
    rst_code,
)

SEND_TIMEOUT = 2.0
# an answer of ~168 KB: more than a call's default window (65 535), so it waits for the client's grant
LARGE = grpc_message(doubling_request(np.ones((14_000, 3), np.float32)).SerializeToString())


@pytest.fixture
def h2() -> Iterator[Harness]:
    with connected(send_timeout_s=SEND_TIMEOUT, budget=BodyBudget(1 << 24)) as harness:
        yield harness


def _streamed(h2: Harness, stream: int) -> bytes:
    """Send one message on the open streaming call ``stream``; the DATA its answer came back in."""
    h2.send(w.frame(w.DATA, 0, stream, MESSAGE))
    return b"".join(f[3] for f in h2.frames() if f[0] == w.DATA and f[2] == stream)


def test_a_call_stalled_on_its_own_window_is_reset_alone_and_the_connection_serves_on(h2: Harness) -> None:
    h2.send(w.window_update(0, 1 << 29))  # the connection's window: plenty
    h2.send(h2.call(1, LARGE))
    assert set(h2.connection.parked) == {1}  # its first 65 535 bytes sent, the rest waits for window
    h2.send(h2.headers(3, call_headers(MODEL_STREAM_INFER)))  # a stream in flight beside it
    assert _streamed(h2, 3)
    for stream in (5, 7, 9):  # the client reads and calls on throughout
        h2.advance(SEND_TIMEOUT / 4)
        h2.send(h2.call(stream, MESSAGE))
        assert answer(h2.frames(), stream)[2]["grpc-status"] == "0"
    h2.advance(SEND_TIMEOUT / 2)
    written = h2.frames()
    assert not h2.transport.closed, "one stalled call took the connection and its stream with it"
    assert [(f[2], rst_code(f)) for f in written if f[0] == w.RST_STREAM] == [(1, w.CANCEL)]
    assert set(h2.connection.calls) == {3} and not h2.connection.parked
    assert _streamed(h2, 3)  # the stream is served on
    h2.send(h2.call(11, MESSAGE))
    assert answer(h2.frames(), 11)[2]["grpc-status"] == "0"
    h2.send(w.frame(w.DATA, w.END_STREAM, 3, b""))
    assert answer(h2.frames(), 3)[2]["grpc-status"] == "0"
    assert h2.server.budget.used == 0  # the cut call's request bytes given back


def test_a_client_granting_its_window_late_to_a_stalled_call_is_not_an_error(h2: Harness) -> None:
    """The cut call is closed: the client's late WINDOW_UPDATE and DATA on it are dropped quietly."""
    h2.send(w.window_update(0, 1 << 29), h2.call(1, LARGE))
    h2.advance(SEND_TIMEOUT * 1.5)
    assert [(f[2], rst_code(f)) for f in h2.frames() if f[0] == w.RST_STREAM] == [(1, w.CANCEL)]
    h2.send(w.window_update(1, 1 << 20))
    assert not h2.frames() and not h2.transport.closed
    h2.send(h2.call(3, MESSAGE))
    assert answer(h2.frames(), 3)[2]["grpc-status"] == "0"


def test_answers_stalled_on_the_connections_window_still_end_the_connection(h2: Harness) -> None:
    h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 1 << 20}), h2.call(1, LARGE))  # no connection grant
    assert set(h2.connection.blocked) == {1} and h2.connection.send_window == 0
    h2.advance(SEND_TIMEOUT * 0.99)
    assert not h2.transport.closed
    h2.advance(SEND_TIMEOUT * 0.02)
    assert h2.transport.aborted


# Counted from when each call began to wait, whatever the connection's other calls do meanwhile:
# the send watch had reset every waiting call at its first check with no byte sent on the connection
# (a call that began to wait a moment before was cut at once), and never reset a stalled call while
# another call's answer was being read, however slowly.
def _resets(h2: Harness) -> list[tuple[int, int]]:
    return [(f[2], rst_code(f)) for f in h2.frames() if f[0] == w.RST_STREAM]


def test_a_stalled_call_is_reset_while_another_answer_is_read_slowly(h2: Harness) -> None:
    h2.send(w.window_update(0, 1 << 29))  # the connection's window: plenty
    h2.send(h2.call(1, LARGE), h2.call(3, LARGE))
    assert set(h2.connection.parked) == {1, 3}  # a call's window's worth sent each, the rest waits
    h2.frames()
    for _ in range(8):  # four send timeouts: call 3's answer read a little at a time, call 1's never
        h2.advance(SEND_TIMEOUT / 2)
        h2.send(w.window_update(3, 1000))
    assert (1, w.CANCEL) in _resets(h2), "a call granted no window for 4 send timeouts was kept"
    assert 1 not in h2.connection.calls and 3 in h2.connection.parked  # the slow reader is kept
    h2.send(w.window_update(3, 1 << 20))
    assert answer(h2.frames(), 3)[2]["grpc-status"] == "0"
    assert h2.server.budget.used == 0


def test_a_call_that_began_to_wait_just_before_the_check_is_not_cut_at_it(h2: Harness) -> None:
    h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 0}), h2.call(1, MESSAGE))
    assert set(h2.connection.parked) == {1}  # the send watch starts now
    h2.advance(SEND_TIMEOUT * 0.9)
    h2.frames()
    h2.send(h2.call(3, MESSAGE))  # begins to wait 0.1 timeouts before the watch's check
    assert set(h2.connection.parked) == {1, 3}
    h2.advance(SEND_TIMEOUT * 0.11)
    assert _resets(h2) == [(1, w.CANCEL)], "a call that had waited a tenth of the send timeout was cut"
    assert set(h2.connection.parked) == {3}
    h2.advance(SEND_TIMEOUT)
    assert _resets(h2) == [(3, w.CANCEL)]  # once it has waited the whole send timeout
    assert not h2.connection.calls and not h2.transport.closed
    h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 1 << 16}), h2.call(5, MESSAGE))
    assert answer(h2.frames(), 5)[2]["grpc-status"] == "0"  # the connection serves on
    assert h2.server.budget.used == 0


def test_a_stream_stalled_on_its_own_window_is_reset_with_its_servicer_stopped_and_bytes_given_back(
    h2: Harness,
) -> None:
    h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 0}), h2.headers(1, call_headers(MODEL_STREAM_INFER)))
    h2.send(w.frame(w.DATA, 0, 1, MESSAGE))
    task = h2.connection.calls[1].task
    assert set(h2.connection.parked) == {1} and h2.server.budget.used > 0  # its request held, unanswered
    h2.frames()
    h2.advance(SEND_TIMEOUT * 1.01)
    assert _resets(h2) == [(1, w.CANCEL)]
    assert task.done() and not h2.connection.calls and h2.server.budget.used == 0
    assert not h2.transport.closed
