"""A Ctrl-C pressed after a SIGTERM of its own (``docker stop``, ``kill`` of the parent of ``--workers``)
quits a worker at once, as it quits a lone gateway, where uvicorn's drain line asks for it ("CTRL+C to
force quit"): taken for the SIGINT that comes with the parent's SIGTERM for one Ctrl-C, it was ignored
in silence, and the parent's SIGTERM that follows it is no Ctrl-C either, so it took two."""

from __future__ import annotations

import signal
import types

import pytest
import uvicorn

from serving import app as app_module
from serving.app import GatewayServer


def _worker() -> GatewayServer:
    server = GatewayServer(uvicorn.Config(lambda *_: None))
    settings = types.SimpleNamespace(reuse_port=True)
    server.config.app = types.SimpleNamespace(state=types.SimpleNamespace(settings=settings))
    server.started = True  # serving; no loop: nothing to cut here, only the decision is read
    return server


def test_a_ctrl_c_long_after_the_sigterm_quits_a_worker_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(app_module.time, "monotonic", lambda: now[0])
    server = _worker()
    server.handle_exit(signal.SIGTERM, None)  # docker stop: the parent's SIGTERM, draining
    assert server.should_exit and not server.force_exit
    now[0] += 10  # the drain waits; the operator presses Ctrl-C
    server.handle_exit(signal.SIGINT, None)
    assert server.force_exit


def test_the_sigint_of_the_ctrl_c_the_parents_sigterm_came_for_still_drains(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(app_module.time, "monotonic", lambda: now[0])
    server = _worker()
    server.handle_exit(signal.SIGTERM, None)
    now[0] += 0.05  # the same key press, milliseconds apart
    server.handle_exit(signal.SIGINT, None)
    assert server.should_exit and not server.force_exit
