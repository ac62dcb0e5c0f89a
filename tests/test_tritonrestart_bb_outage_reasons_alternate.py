"""A Triton killed under traffic is a line or two in the gateway's log, not a line every few probes:
requests failing on the lost link drop the shared client under a probe in flight, so the probes'
reason alternated between "connection refused" and "the connection closed during the call", and the
log, keyed on the last reason alone, said the outage again at each switch (five lines in seven
seconds against a real Triton restarted under classify and translate traffic)."""

from __future__ import annotations

import logging

import pytest

from serving.errors import Unavailable
from serving.execution.triton import TritonBackend

REFUSED = "Triton at 127.0.0.1:1 is unavailable: connection refused"
CLOSED = "Triton at 127.0.0.1:1 is unavailable: the connection closed during the call"


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The lines at INFO and above saying Triton is not ready."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.INFO and r.getMessage().startswith("Triton not ready")
    ]


def test_an_outage_whose_reason_alternates_says_each_reason_once(loop, monkeypatch, caplog) -> None:
    backend = TritonBackend("127.0.0.1:1", "http", timeout_s=5)
    reasons = iter([REFUSED, CLOSED, REFUSED, CLOSED, REFUSED, None, REFUSED])

    async def call(method: str, *args: object, **kwargs: object) -> bool:
        reason = next(reasons)
        if reason is not None:
            raise Unavailable(reason)
        return True

    async def sync(**kwargs: object) -> None:
        return None

    monkeypatch.setattr(backend, "_call", call)
    monkeypatch.setattr(backend, "_sync", sync)
    with caplog.at_level(logging.INFO, logger="serving.execution.triton"):
        states = [loop.run(backend.is_ready()) for _ in range(7)]
    assert states == [False] * 5 + [True, False]
    # the outage's two reasons once each; Triton back, then a new outage: a line again
    assert _said(caplog) == [f"Triton not ready: {m}" for m in (REFUSED, CLOSED, REFUSED)], caplog.text
