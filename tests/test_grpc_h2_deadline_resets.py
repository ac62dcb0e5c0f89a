"""A client's RST_STREAM spends the rapid-reset budget (serving/protocol/h2_control.py) unless its call's
deadline is what ended it: past half the call's ``grpc-timeout`` and ``DEADLINE_RESET_AFTER_S`` after
it opened. Without that floor a tiny timeout (1 ms) let a client open and reset calls in a flood
without ever spending the budget. One connection in memory on a clock that moves only when the test
moves it (tests/h2_client.py)."""

from __future__ import annotations

import pytest

from serving.protocol import h2_control
from serving.protocol import h2_wire as w
from tests.h2_client import MESSAGE, answer, call_headers, connected, goaway_code

STREAMS = range(1, 4 * h2_control.RESET_BURST, 2)  # twice the burst


@pytest.mark.parametrize(
    ("timeout", "reset_after_s", "closed"),
    [
        ("1u", 0.0000006, True),  # reset at once (a microsecond is "half its timeout" already)
        ("1m", 0.0006, True),  # past half of 1 ms, long before the floor
        ("30m", 0.016, True),  # past half of 30 ms, not yet the floor
        ("30m", 0.025, False),  # past both: its deadline's
        ("100m", 0.06, False),
        ("10S", 1.0, True),  # long before half its timeout: a rapid reset
    ],
)
def test_calls_reset_together_spend_the_rapid_reset_budget_unless_their_deadline_ended_them(
    timeout: str, reset_after_s: float, closed: bool
) -> None:
    """Calls opened (their messages not yet sent) and all reset ``reset_after_s`` later."""
    with connected() as h2:
        h2.send(*(h2.headers(stream, call_headers(grpc_timeout=timeout)) for stream in STREAMS))
        h2.advance(reset_after_s)
        assert len(h2.connection.calls) == len(STREAMS)  # none ended by its deadline yet
        h2.send(*(w.rst_stream(stream, w.CANCEL) for stream in STREAMS))
        goaways = [frame for frame in h2.frames() if frame[0] == w.GOAWAY]
        if closed:
            assert [goaway_code(frame) for frame in goaways] == [w.ENHANCE_YOUR_CALM]
            return
        assert goaways == []
        last = 2 * len(STREAMS) + 1
        h2.send(h2.call(last, MESSAGE))  # the connection serves on
        assert answer(h2.frames(), last)[2]["grpc-status"] == "0"
