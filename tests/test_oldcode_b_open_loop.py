"""The bench's open loop credits a server with at most the rate it was offered: its window is the
offered one at least, not the first send to the last reply, which leaves out one interval."""

from __future__ import annotations

import asyncio

import pytest

from bench import load
from tests.test_bench import _in_virtual_time


async def _answered_in_1ms() -> bool:
    await asyncio.sleep(0.001)
    return True


@pytest.mark.parametrize(
    ("rate_rps", "duration_s", "sent"),
    [
        pytest.param(1.0, 1.0, 1, id="one-request"),
        pytest.param(100.0, 0.1, 10, id="ten-requests"),
        pytest.param(10.0, 0.35, 3, id="window-not-a-whole-number-of-intervals"),
    ],
)
def test_open_loop_throughput_of_a_server_that_keeps_up_is_the_offered_rate_not_more(
    monkeypatch, rate_rps, duration_s, sent
):
    result = _in_virtual_time(monkeypatch, load.open_loop(_answered_in_1ms, rate_rps, duration_s))
    assert result.ok == sent and result.errors == 0
    assert result.as_dict()["throughput_rps"] == pytest.approx(rate_rps)
    assert result.duration_s == pytest.approx(sent / rate_rps)


def test_an_open_loop_that_falls_behind_still_counts_its_drain(monkeypatch):
    """A server slower than the rate: the window runs to the last reply, so throughput is below the rate."""

    lock: list[asyncio.Lock] = []

    async def one_at_a_time() -> bool:
        lock[:] = lock or [asyncio.Lock()]  # made on the loop that runs it
        async with lock[0]:
            await asyncio.sleep(0.02)
        return True

    result = _in_virtual_time(monkeypatch, load.open_loop(one_at_a_time, rate_rps=100.0, duration_s=0.1))
    assert result.ok == 10
    assert result.duration_s == pytest.approx(10 * 0.02)
    assert result.as_dict()["throughput_rps"] == pytest.approx(50.0)
