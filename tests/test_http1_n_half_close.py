"""A client that ends its half of the connection (a normal close, ``shutdown(SHUT_WR)``) is taken as
gone, as uvicorn takes it: its request in flight is cancelled, so a translation's rows leave the batch
(tests/test_translate_serving.py), and nothing more is answered. What the server already wrote as the
FIN arrived still goes out: the gateway's HTTP/1.1 protocol (serving.protocol.http1) holds a step's
writes until its end (coalesced writes), and the close on the FIN had dropped them (an empty reply)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from serving.protocol import lean
from serving.protocol.http1 import http_protocol
from tests.repo_fixtures import LiveServer


def app_and_protocol() -> tuple[FastAPI, type]:
    """An app whose ``/after-fin`` answers only once the server has read its client's FIN, and the
    gateway's protocol, which tells it when that happens."""
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn serves with h11")
    fins: dict[int, asyncio.Event] = {}

    def fin_of(port: int) -> asyncio.Event:
        return fins.setdefault(port, asyncio.Event())

    async def lean_after_fin(request: Request, name: str) -> JSONResponse:
        await fin_of(int(request.query_params["port"])).wait()
        return JSONResponse({"after": "fin"})

    class App(FastAPI):  # POST /v1/models/<name>/after-fin answered by the protocol itself
        def build_middleware_stack(self):
            stack = super().build_middleware_stack()
            route = lean.LeanRoute("/v1/models/", "/after-fin", lean_after_fin)
            return lean.LeanRoutes(self, stack, 4096, (route,))

    app = App()

    class SeesFins(protocol):  # type: ignore[misc, valid-type]
        def eof_received(self):
            fin_of(self.client[1]).set()
            return super().eof_received()

    @app.get("/after-fin")
    async def after_fin(port: int) -> dict:
        await fin_of(port).wait()
        return {"after": "fin"}

    @app.post("/echo")
    async def echo(body: dict) -> dict:
        return body

    return app, SeesFins


@pytest.fixture(scope="module")
def live():
    app, protocol = app_and_protocol()
    with LiveServer(app, http=protocol) as server:
        yield server


def half_closed(live: LiveServer, request: bytes | None = None) -> bytes:
    """Send ``request`` (``%d`` in it: the connection's own port; by default a GET naming it), end
    our half, and read everything the server sends until it ends its own."""
    sock = socket.create_connection(("127.0.0.1", live.port), timeout=30)
    with sock:
        port = sock.getsockname()[1]
        request = request or b"GET /after-fin?port=%d HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(request.replace(b"%d", b"%d" % port))
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def test_a_request_still_computing_at_the_clients_fin_is_cancelled_unanswered(live):
    assert half_closed(live) == b""


def test_a_lean_request_still_computing_at_the_clients_fin_is_cancelled_unanswered(live):
    head = b"POST /v1/models/m/after-fin?port=%d HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    assert half_closed(live, head + b"Content-Length: 2\r\n\r\n{}") == b""


def test_the_fin_sends_what_the_step_wrote_before_the_connection_closes():
    """An answer written in the step that read the FIN is held by the coalesced writes until the step
    ends; the close on the FIN comes first, so eof_received sends it (whether the FIN is read before or
    after a handler writes is the network's timing: this checks the protocol's part alone)."""
    from types import SimpleNamespace

    from serving.protocol.http1_httptools import CoalescingHttpToolsProtocol

    calls: list[str] = []
    stand_in = SimpleNamespace(transport=SimpleNamespace(flush=lambda: calls.append("flush")))
    assert CoalescingHttpToolsProtocol.eof_received(stand_in) is None  # None: the loop closes it
    assert calls == ["flush"]


def test_a_request_cut_short_by_the_fin_is_closed_without_an_answer(live):
    assert half_closed(live, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}") == b""
