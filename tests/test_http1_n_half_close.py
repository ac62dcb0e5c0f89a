"""A client that ends its half of the connection after its request (``shutdown(SHUT_WR)``, as an
HTTP/1.0-style client or ``nc -N`` does) still gets its answer, then the connection closes: the
gateway's HTTP/1.1 protocol (serving.protocol.http1) let the event loop close the connection on the
client's FIN, dropping an answer written in that step (held by the coalesced writes) or still being
computed (RFC 9112 9.6: a client's FIN ends its requests, not the answers it is owed)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from serving.protocol import lean
from serving.protocol.http1 import http_protocol
from tests.repo_fixtures import LiveServer

READY = b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"


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

    @app.get("/ready")
    async def ready() -> dict:
        return {"ready": True}

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


def test_an_answer_computed_after_the_clients_fin_still_reaches_it(live):
    data = half_closed(live)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data
    assert data.endswith(b'{"after":"fin"}')


def test_a_lean_answer_computed_after_the_clients_fin_still_reaches_it(live):
    head = b"POST /v1/models/m/after-fin?port=%d HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    data = half_closed(live, head + b"Content-Length: 2\r\n\r\n{}")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data
    assert data.endswith(b'{"after":"fin"}')


def test_an_answer_written_as_the_fin_arrives_is_not_dropped(live):
    for _ in range(20):  # the FIN read in the step that wrote the answer, or the next: either way
        data = half_closed(live, READY)
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b'{"ready":true}'), data


def test_pipelined_requests_sent_whole_before_the_fin_are_all_answered_in_order(live):
    data = half_closed(live, READY * 3)
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 3, data


def test_a_request_cut_short_by_the_fin_is_closed_without_an_answer(live):
    assert half_closed(live, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}") == b""
