"""The drain (SIGTERM) of a keep-alive connection whose next request crossed the stop (unread in its
socket, ``HeadLimits.shutdown``, ``_drained``): that request is answered with ``connection: close``, and
where nothing more of the client's lies unread the connection then closes at once, as it did before
a7ec302. That commit made every such close linger (our FIN, then the client's FIN or ``LINGER_S``), which
only a client's later requests left unread call for: a client that keeps its socket after the answer
held the server's stop ``LINGER_S`` (2 s) longer, measured with 50 such connections (0.1 s before, 2.0 s
after). A burst left unread still lingers (tests/test_ho_drain_between_burst.py)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
from fastapi import Response
from starlette.background import BackgroundTask

from serving.protocol.http1 import http_protocol
from serving.protocol.http1_heads import LINGER_S, unread_bytes
from tests.pipelining import recv_until
from tests.repo_fixtures import LiveServer
from tests.test_http1_direct import make_app

FIRST = b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
GET = b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n"
LEAN = b"POST /v1/models/m/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"


@pytest.mark.parametrize(
    ("request_", "last"), [(GET, b'{"other":true}'), (LEAN, b'"query":""}')], ids=["asgi-cycle", "lean-route"]
)
def test_the_drains_lone_last_answer_closes_without_waiting_for_the_client(request_, last):
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn serves with h11")
    connections: list = []
    answered, holding, sent, lost = (threading.Event() for _ in range(4))

    class Watched(protocol):
        def connection_made(self, transport) -> None:  # noqa: ANN001
            super().connection_made(transport)
            connections.append(self)

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            lost.set()

    async def stop_with_the_request_unread() -> None:
        """After /first's answer, the loop held until the next request is in the socket; then the
        drain, as the server begins it at a SIGTERM (its ``shutdown``)."""
        while not answered.is_set():
            await asyncio.sleep(0.005)
        holding.set()  # the loop reads nothing until the request is sent
        assert sent.wait(10)  # a failure bound
        (conn,) = connections
        for _ in range(500):  # a failure bound (5 s)
            if unread_bytes(conn.transport) >= len(request_):
                break
            time.sleep(0.01)  # the loop held: nothing is read meanwhile
        conn.shutdown()
        assert conn._drained

    app = make_app()

    @app.get("/first")
    async def first() -> Response:
        return Response(b"F", background=BackgroundTask(stop_with_the_request_unread))

    with (
        LiveServer(app, http=Watched) as live,
        socket.create_connection(("127.0.0.1", live.port)) as sock,
    ):
        sock.settimeout(10)  # a failure bound
        sock.sendall(FIRST)
        recv_until(sock, b"\r\n\r\nF")
        answered.set()
        assert holding.wait(10)  # a failure bound
        sock.sendall(request_)
        sent.set()
        answer = b""
        while chunk := sock.recv(4096):  # the answer, then the server's end of the stream
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(last), answer
        assert b"connection: close\r\n" in answer
        # the socket kept open: the server closes its connection without waiting LINGER_S for our FIN
        assert lost.wait(LINGER_S / 2), "the connection lingered, nothing of the client's left unread"
