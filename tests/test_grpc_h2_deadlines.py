"""Kiln's gRPC server ends a call whose request does not arrive in time (serving/protocol/h2_watch.py):
at its client's deadline (``grpc-timeout``) or when its DATA pauses longer than the read timeout, with
DEADLINE_EXCEEDED and the connection serving on; a request that keeps arriving, or one the server
itself stopped reading, is never cut. Each test drives one connection in memory (tests/h2_client.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from serving.protocol import h2_wire as w
from tests.h2_client import Harness, answer, call_headers, doubling_request, grpc_message, rst_code

READ_TIMEOUT = 0.3
MESSAGE = grpc_message(doubling_request(np.arange(6, dtype=np.float32).reshape(2, 3)).SerializeToString())
DEADLINE_EXCEEDED = "4"


@pytest.fixture
def h2() -> Iterator[Harness]:
    harness = Harness(read_timeout_s=READ_TIMEOUT)
    harness.frames()  # the server's SETTINGS and its ack of ours
    yield harness
    harness.close()


def _ended(h2: Harness, stream: int) -> tuple[str, str, list[int]]:
    """Wait for the server to end ``stream``: its grpc-status, grpc-message and the RST_STREAM codes."""
    h2.run_until(lambda: stream not in h2.connection.calls)
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
    status, message, resets = _ended(h2, 1)
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
    """The allowance is between DATA frames: a message sent a byte a tenth of the allowance apart,
    over twice the allowance in all, is read whole and answered."""
    h2.send(h2.headers(1, call_headers()))
    pieces = [MESSAGE[:-8], *(MESSAGE[at : at + 1] for at in range(len(MESSAGE) - 8, len(MESSAGE)))]
    for piece in pieces[:-1]:
        h2.send(w.frame(w.DATA, 0, 1, piece))
        h2.loop.run_until_complete(asyncio.sleep(READ_TIMEOUT / 4))  # the client's pace
    h2.send(w.frame(w.DATA, w.END_STREAM, 1, pieces[-1]))
    _, _, trailers = answer(h2.frames(), 1)
    assert trailers["grpc-status"] == "0"


def test_a_call_the_server_stopped_reading_is_not_cut(h2: Harness) -> None:
    """While the client does not read the server's answers the server does not read it (back-pressure),
    so the calls it was sending wait on the server, not on the client: their clock stops."""
    h2.send(h2.headers(1, call_headers()))
    h2.connection.pause_writing()
    started = h2.loop.time()
    h2.run_until(lambda: h2.loop.time() - started > 3 * READ_TIMEOUT)
    assert 1 in h2.connection.calls
    h2.connection.resume_writing()
    h2.send(w.frame(w.DATA, w.END_STREAM, 1, MESSAGE))
    _, _, trailers = answer(h2.frames(), 1)
    assert trailers["grpc-status"] == "0"


def test_a_call_the_client_resets_is_forgotten_by_the_watch(h2: Harness) -> None:
    h2.send(h2.headers(1, call_headers()), w.frame(w.DATA, 0, 1, MESSAGE[:10]))
    h2.send(w.rst_stream(1, w.CANCEL))
    assert not h2.connection.partial
    h2.run_until(lambda: h2.connection.watch is None)  # it fires, finds nothing, and stays off
    assert [frame for frame in h2.frames() if frame[2] == 1] == []
