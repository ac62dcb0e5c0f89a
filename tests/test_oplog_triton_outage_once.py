"""A Triton the gateway cannot reach is one line in its log an outage, not one a readiness probe: a
Deployment's probes (every few seconds, HTTP and gRPC, each worker's) wrote the same "Triton not ready"
line on and on while Triton was down. The probes still answer not ready, and a new outage, or a new
reason, is a line again."""

from __future__ import annotations

import logging

import pytest

from serving.errors import Unavailable
from serving.execution.triton import TritonBackend


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The lines at INFO and above saying Triton is not ready."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.INFO and r.name == "serving.execution.triton" and "ready" in r.getMessage()
    ]


def test_probes_of_an_unreachable_triton_log_its_outage_once(loop, nowhere, caplog) -> None:
    backend = TritonBackend(nowhere, timeout_s=5, probe_timeout_s=2)
    with caplog.at_level(logging.INFO, logger="serving.execution.triton"):
        loop.run(backend.start())
        try:
            assert [loop.run(backend.is_ready()) for _ in range(4)] == [False] * 4
        finally:
            loop.run(backend.stop())
    said = _said(caplog)
    assert len(said) == 1 and "starts unready" in said[0] and nowhere in said[0], said


def test_a_new_outage_after_triton_was_ready_is_logged_again(loop, monkeypatch, caplog) -> None:
    backend = TritonBackend("127.0.0.1:1", timeout_s=5)
    up = [False]

    async def call(method: str, *args: object, **kwargs: object) -> bool:
        if not up[0]:
            raise Unavailable("Triton at 127.0.0.1:1 is unavailable: connection refused")
        return True

    async def sync(**kwargs: object) -> None:
        return None

    monkeypatch.setattr(backend, "_call", call)
    monkeypatch.setattr(backend, "_sync", sync)
    states = []
    with caplog.at_level(logging.INFO, logger="serving.execution.triton"):
        for now_up in (False, False, True, True, False, False):
            up[0] = now_up
            states.append(loop.run(backend.is_ready()))
    assert states == [False, False, True, True, False, False]
    assert _said(caplog) == ["Triton not ready: Triton at 127.0.0.1:1 is unavailable: connection refused"] * 2
