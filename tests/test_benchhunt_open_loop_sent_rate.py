"""Kiln's open loop says the rate it actually sent at: a client short of CPU fell behind its schedule
silently, its lateness counted in the latencies and its row showing only the rate it was asked for, as
if the server had been offered it; the report's open-loop table names the row's protocol too."""

from __future__ import annotations

import asyncio

import pytest

from bench import load, report
from tests.test_bench import _in_virtual_time


async def _answered_in_1ms() -> bool:
    await asyncio.sleep(0.001)
    return True


async def _client_spends_20ms() -> bool:
    """A client that spends 20 ms of its own CPU on each request before it goes out."""
    asyncio.get_running_loop().now += 0.02  # the virtual clock moves, as a busy client's would
    await asyncio.sleep(0.001)
    return True


def test_an_open_loop_on_schedule_sent_at_its_rate(monkeypatch):
    result = _in_virtual_time(monkeypatch, load.open_loop(_answered_in_1ms, rate_rps=100.0, duration_s=0.1))
    assert result.ok == 10
    assert result.as_dict()["sent_rps"] == pytest.approx(100.0)


def test_an_open_loop_whose_client_falls_behind_says_so(monkeypatch):
    result = _in_virtual_time(
        monkeypatch, load.open_loop(_client_spends_20ms, rate_rps=100.0, duration_s=0.1)
    )
    row = result.as_dict()
    assert row["rate_rps"] == 100.0
    assert row["sent_rps"] < 60.0  # one request every 20 ms, not every 10


def test_a_closed_loop_row_has_no_sent_rate(monkeypatch):
    result = _in_virtual_time(monkeypatch, load.closed_loop(_answered_in_1ms, 1, 0.05, warmup_s=0.0))
    assert "sent_rps" not in result.as_dict()


def test_the_open_loop_table_shows_the_protocol_and_the_sent_rate():
    opened = {
        "target": "gateway",
        "protocol": "grpc",
        "rate_rps": 500.0,
        "sent_rps": 240.0,
        "throughput_rps": 239.0,
        "p50_ms": 500.0,
        "p99_ms": 1000.0,
        "errors": 0,
    }
    text = report.server_section({"closed": [], "open": [opened]}, float("nan"))
    header = next(line for line in text.splitlines() if line.startswith("| target | protocol | rate_rps"))
    assert "sent_rps" in header
    assert "| gateway | grpc | 500.00 | 240.00 | 239.00 |" in text
