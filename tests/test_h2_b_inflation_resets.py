"""A call whose compressed message inflates in a thread (past ``LOOP_INFLATE_BYTES``) holds what it
inflates to in the body budget as it grows. Reset by its client, ended by its deadline or by the
connection closing while the thread still inflates, it gave its bytes back, and then the thread, which
runs on, took more for a call gone: never given back, so each such reset shrank the budget the whole
gateway (HTTP too) refuses requests by, until every request was UNAVAILABLE. A stream's compressed
messages leaked the same way when their stream was reset in the read that brought them: its servicer
still read them, each held at its inflated size after the stream had given its bytes back."""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from serving.protocol import h2_calls
from serving.protocol import h2_wire as w
from serving.protocol.limits import BodyBudget
from tests.h2_client import MESSAGE, MODEL_STREAM_INFER, Harness, call_headers, doubling_request, grpc_message

INFLATED = 8 << 20  # zeros inflated in 1 MiB steps: the thread asks the budget at each


class Gate:
    """Holds the inflation thread after its first grant of the budget until the test lets it go on,
    and tells when the thread's work is over (whatever its end)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.first, self.resume, self.done = threading.Event(), threading.Event(), threading.Event()
        real_hold, real_inflate = h2_calls.held_from_a_thread, h2_calls._inflated_request

        def held(hold: Callable[[int], bool]) -> Callable[[int], bool]:
            grow = real_hold(hold)

            def gated(size: int) -> bool:
                granted = grow(size)
                if not self.first.is_set():
                    self.first.set()
                    assert self.resume.wait(30)
                return granted

            return gated

        def inflated(*args, **kwargs):
            try:
                return real_inflate(*args, **kwargs)
            finally:
                self.done.set()

        monkeypatch.setattr(h2_calls, "held_from_a_thread", held)
        monkeypatch.setattr(h2_calls, "_inflated_request", inflated)

    def wait(self, loop: asyncio.AbstractEventLoop, event: threading.Event) -> None:
        """Run ``loop`` (which answers the thread's asks of the budget) until ``event`` is set."""
        assert loop.run_until_complete(asyncio.to_thread(event.wait, 30))


@pytest.fixture
def budget() -> BodyBudget:
    return BodyBudget(256 << 20)


@pytest.fixture
def h2(budget: BodyBudget) -> Iterator[Harness]:
    harness = Harness(max_message_bytes=64 << 20, budget=budget)
    harness.frames()
    yield harness
    harness.close()


def _compressed_call(h2: Harness, **extra: str) -> bytes:
    message = grpc_message(gzip.compress(bytes(INFLATED)), compressed=True)
    headers = h2.headers(1, call_headers(grpc_encoding="gzip", **extra))
    return headers + w.frame(w.DATA, w.END_STREAM, 1, message)


@pytest.mark.parametrize("end", ["client-reset", "deadline", "connection-lost"])
def test_a_call_ended_while_its_message_inflates_in_a_thread_leaves_the_budget_as_it_was(
    h2: Harness, budget: BodyBudget, monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    gate = Gate(monkeypatch)
    frames = _compressed_call(h2, grpc_timeout="5S") if end == "deadline" else _compressed_call(h2)
    h2.connection.data_received(frames)  # dispatched: the thread starts inflating
    gate.wait(h2.loop, gate.first)
    assert budget.used > 0  # held while it inflates
    if end == "client-reset":
        h2.connection.data_received(w.rst_stream(1, w.CANCEL))
    elif end == "deadline":
        h2.advance(6.0)
    else:  # the client went away
        h2.connection.connection_lost(None)
    gate.resume.set()
    gate.wait(h2.loop, gate.done)
    assert budget.used == 0
    if end != "connection-lost":
        h2.send(h2.call(3, MESSAGE))  # the connection serves on
        assert any(f[0] == w.HEADERS and f[2] == 3 for f in h2.frames())


def test_a_stream_reset_in_the_read_that_brings_its_compressed_messages_leaves_the_budget_as_it_was(
    h2: Harness, budget: BodyBudget
) -> None:
    request = doubling_request(np.zeros((1000, 3), np.float32)).SerializeToString()  # 12 KB, gzip ~100 B
    message = grpc_message(gzip.compress(request), compressed=True)
    h2.send(h2.headers(1, call_headers(MODEL_STREAM_INFER, grpc_encoding="gzip")))  # its servicer waits
    h2.send(w.frame(w.DATA, 0, 1, message * 2) + w.rst_stream(1, w.CANCEL))  # leaked ~24 KB for good
    assert budget.used == 0 and not h2.connection.calls
    h2.send(h2.call(3, MESSAGE))  # the connection serves on
    assert any(f[0] == w.HEADERS and f[2] == 3 for f in h2.frames())
    assert budget.used == 0
