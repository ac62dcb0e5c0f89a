"""A Triton outage that readiness probes did not see end is still a line when the next one begins: the
log said each outage once, keyed on the last message a probe logged, and only a probe that found
Triton ready cleared it. Triton seen back by the start-up watcher or a request (a gateway started
before Triton, probed by nobody or only now and then) left the start's message standing, so the next
outage, with the same "connection refused", went to debug: the last line at INFO said Triton serves."""

from __future__ import annotations

import logging

import pytest

from serving.errors import Unavailable
from serving.execution.triton import TritonBackend

REFUSED = "Triton at 127.0.0.1:1 is unavailable: connection refused"


def _not_ready_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.INFO and r.getMessage().startswith("Triton not ready")
    ]


def test_an_outage_after_triton_came_back_unprobed_is_logged_at_info(loop, monkeypatch, caplog) -> None:
    backend = TritonBackend("127.0.0.1:1", "http", timeout_s=5)
    up = [False]

    async def call(method: str, *args: object, **kwargs: object) -> object:
        if not up[0]:
            raise Unavailable(REFUSED)
        return [] if method == "get_model_repository_index" else True

    monkeypatch.setattr(backend, "_call", call)
    with caplog.at_level(logging.INFO, logger="serving.execution.triton"):
        loop.run(backend.start())  # Triton not up yet: "starts unready", with the refusal
        try:
            up[0] = True
            loop.run(backend._ensure_known("m"))  # a request finds Triton back (as the watcher would)
            assert backend._synced
            up[0] = False  # a new outage; the first probe since
            assert loop.run(backend.is_ready()) is False
        finally:
            loop.run(backend.stop())
    assert _not_ready_lines(caplog) == [f"Triton not ready: {REFUSED}"], caplog.text
