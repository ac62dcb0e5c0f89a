"""The drain (SIGTERM) of a keep-alive connection between requests, its client's pipelined burst
unread in the socket: the drain keeps it for the first of those requests (``HeadLimits.shutdown``,
``_drained``), answered with ``connection: close``. That close was plain while the rest of the burst
lay unread (reading pauses while requests wait their turn), and closing a socket with unread bytes
resets it: the client got ``ECONNRESET`` instead of that last answer and the end of the stream. It
lingers now, as the drain's last answer does on a connection answering a request at the stop."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time

import pytest
from fastapi import Response
from starlette.background import BackgroundTask

from serving.protocol.http1 import http_protocol
from serving.protocol.http1_heads import unread_bytes
from tests.pipelining import ending, recv_until, send_until_full
from tests.repo_fixtures import LiveServer
from tests.test_http1_direct import make_app

PAD = b"x-pad: " + b"p" * 2000 + b"\r\n"
GET = b"GET /live HTTP/1.1\r\nHost: x\r\n" + PAD + b"\r\n"
FIRST = b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"


LEAN = b"POST /v1/models/m/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n" + b"b" * 2000


@pytest.mark.parametrize(
    ("burst", "last"),
    [(GET, b"connection: close\r\n\r\nL"), (LEAN, b'"query":""}')],
    ids=["asgi-cycle", "lean-route"],
)
def test_the_drains_last_answer_to_a_burst_unread_between_requests_arrives_whole(burst, last):
    """``lean-route``: the gateway answers the burst's first request itself (a lean route's POST, its
    ``DirectCycle``), and its close was plain too."""
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn serves with h11")
    connections: list = []
    answered, holding, burst_sent = threading.Event(), threading.Event(), threading.Event()
    drained, ended = threading.Event(), threading.Event()

    class Watched(ending(protocol, ended)):
        def connection_made(self, transport) -> None:  # noqa: ANN001
            super().connection_made(transport)
            connections.append(self)

    async def stop_with_the_burst_unread() -> None:
        """After /first's answer (the connection between requests), the loop held while the burst
        arrives; then the drain, as the server begins it at a SIGTERM (its ``shutdown``)."""
        while not answered.is_set():  # the answer's coalesced writes go out on the loop's next turns
            await asyncio.sleep(0.005)
        holding.set()  # the loop reads nothing until the burst is sent
        assert burst_sent.wait(10)  # a failure bound
        (conn,) = connections
        deadline = time.monotonic() + 5
        while not unread_bytes(conn.transport) and time.monotonic() < deadline:
            time.sleep(0.01)
        conn.shutdown()
        drained.set()

    app = make_app()

    @app.get("/first")
    async def first() -> Response:
        return Response(b"F", background=BackgroundTask(stop_with_the_burst_unread))

    @app.get("/live")
    async def live_route() -> Response:
        return Response(b"L")

    with (
        LiveServer(app, http=Watched) as live,
        socket.create_connection(("127.0.0.1", live.port)) as sock,
    ):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)  # a failure bound
        sock.sendall(FIRST)
        answers = recv_until(sock, b"\r\n\r\nF")
        answered.set()
        assert holding.wait(10)  # a failure bound
        send_until_full(sock, burst * 200)  # ~400 KB: more than one read (256 KB)
        burst_sent.set()
        assert drained.wait(10) and ended.wait(10)  # failure bounds, never waited out
        sock.setblocking(True)
        sock.settimeout(10)
        while chunk := sock.recv(1 << 16):  # ConnectionResetError before the fix
            answers += chunk
    statuses = re.findall(rb"HTTP/1.1 (\d+)", answers)
    assert statuses == [b"200", b"200"], answers[-300:]
    final = answers.rpartition(b"HTTP/1.1 ")[2]  # the drain's last answer, whole
    assert final.endswith(last) and b"connection: close\r\n" in final, final[:300]
