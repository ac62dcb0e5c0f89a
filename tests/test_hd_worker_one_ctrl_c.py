"""One Ctrl-C in the terminal of ``python -m serving --workers N`` drains: it reaches each worker twice,
as the terminal's SIGINT and as the SIGTERM the parent sends each worker for it, in either order; with
the SIGTERM first, uvicorn took the SIGINT for a second Ctrl-C and the worker cut its requests in
flight ("second Ctrl-C: quitting at once", exit 1) in about one stop in three. A second Ctrl-C still
quits at once."""

from __future__ import annotations

import signal
import types

import pytest
import uvicorn

from serving.app import GatewayServer


def _server(worker: bool) -> GatewayServer:
    server = GatewayServer(uvicorn.Config(lambda *_: None))
    settings = types.SimpleNamespace(reuse_port=worker)
    server.config.app = types.SimpleNamespace(state=types.SimpleNamespace(settings=settings))
    server.started = True  # serving; no loop: nothing to cut here, only the decision is read
    return server


@pytest.mark.parametrize("order", [(signal.SIGTERM, signal.SIGINT), (signal.SIGINT, signal.SIGTERM)])
def test_a_worker_drains_on_one_ctrl_c_whichever_of_its_two_signals_comes_first(order):
    server = _server(worker=True)
    for sig in order:
        server.handle_exit(sig, None)
    assert server.should_exit and not server.force_exit
    server.handle_exit(signal.SIGTERM, None)  # the second Ctrl-C: the parent's SIGTERM first, then ...
    assert not server.force_exit
    server.handle_exit(signal.SIGINT, None)  # ... the terminal's SIGINT: quit at once
    assert server.force_exit


def test_a_lone_gateway_still_quits_at_a_sigint_after_a_sigterm():
    server = _server(worker=False)
    server.handle_exit(signal.SIGTERM, None)
    server.handle_exit(signal.SIGINT, None)
    assert server.force_exit
