"""The drain at a stop (SIGTERM) of a connection whose client pipelined more requests than the gateway
read: reading pauses while requests wait their turn (:class:`QueuedRequestsFirst`), so the client's
later requests lie unread in the socket when the drain's last answer closes the connection, and
closing a socket with unread bytes resets it: the reset discarded the answers still on their way
(a pipelining client that read slowly got the first few of its answers, then ``ECONNRESET``; before
reading paused, every answer arrived, then the end of the stream). That close lingers now, as after
a refusal: the answers, the gateway's end of the stream, the client's bytes read and dropped."""

from __future__ import annotations

import asyncio
import re
import socket
import threading

import pytest
from fastapi import FastAPI, Request, Response

from serving.protocol.http1 import http_protocol
from tests.pipelining import ending, send_until_full
from tests.repo_fixtures import LiveServer

PAD = b"x-pad: " + b"p" * 2000 + b"\r\n"  # ~130 requests a read: their answers fit the socket buffers
GET = b"GET /live HTTP/1.1\r\nHost: x\r\n" + PAD + b"\r\n"
SLOW = b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"


def app(stopping: threading.Event) -> FastAPI:
    made = FastAPI()

    @made.get("/live")
    async def live() -> Response:
        return Response(b"L")

    @made.get("/slow")
    async def slow() -> Response:  # answered once the drain has begun: the requests behind it wait
        while not stopping.is_set():
            await asyncio.sleep(0.01)
        return Response(b"S")

    @made.post("/size")
    async def size(request: Request) -> Response:
        return Response(str(len(await request.body())).encode())

    return made


def test_the_drain_delivers_every_answer_to_a_pipelining_client_whose_later_requests_wait_unread():
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn serves with h11")
    stopping, ended = threading.Event(), threading.Event()  # the drain began; the gateway's end is written

    class Watched(ending(protocol, ended)):
        def shutdown(self) -> None:
            super().shutdown()
            stopping.set()

    with LiveServer(app(stopping), http=Watched) as live:
        # room for every answer in the gateway's send buffer, none in the client's: at the close they
        # wait in the gateway's socket, where a reset discards them
        live.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        with socket.create_connection(("127.0.0.1", live.port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            send_until_full(sock, SLOW + GET * 200)  # ~400 KB: more than one read (256 KB)
            live.server.should_exit = True  # the drain, as at SIGTERM
            assert ended.wait(10)  # the gateway has answered and ended (a failure bound, never waited out)
            sock.setblocking(True)
            sock.settimeout(10)
            answers = b""
            while chunk := sock.recv(1 << 16):  # ConnectionResetError before the fix
                answers += chunk
    statuses = re.findall(rb"HTTP/1.1 (\d+)", answers)
    assert len(statuses) > 1 and set(statuses) == {b"200"}, answers[-300:]
    assert answers.endswith(b"connection: close\r\n\r\nL"), answers[-300:]  # the drain's last answer, whole


def test_requests_read_behind_the_drains_last_one_are_never_begun():
    """The drain's last request reads its body, which resumes reading: requests the client sent after
    it are read and queued. Its answer ends the connection (its lingering close), and they were begun
    all the same: each one's answer raised "Cannot call write() after write_eof()"."""
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn serves with h11")
    stopping, started, begun = threading.Event(), threading.Event(), []  # (path, lingering) of each begun

    class Watched(protocol):
        def shutdown(self) -> None:
            super().shutdown()
            stopping.set()

        def _start_asgi_task(self, cycle, app) -> None:  # noqa: ANN001
            begun.append((cycle.scope["path"], self._lingering is not None))
            super()._start_asgi_task(cycle, app)
            started.set()

    body = b"y" * 600_000
    head = b"POST /size HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    with LiveServer(app(stopping), http=Watched, log_level="critical") as live:
        sock = socket.create_connection(("127.0.0.1", live.port), timeout=10)
        with sock:
            sock.sendall(SLOW + head + body[:100_000])  # its body under way while /slow is answered
            assert started.wait(10)  # /slow begun: the POST waits its turn, queued (a failure bound)
            live.server.should_exit = True  # the drain: the POST is the last
            sock.sendall(body[100_000:] + GET * 20)  # sent after it: never to be answered
            answers = b""
            while chunk := sock.recv(1 << 16):
                answers += chunk
    assert re.findall(rb"HTTP/1.1 (\d+)", answers) == [b"200", b"200"], answers[-300:]
    assert answers.endswith(b"connection: close\r\n\r\n600000"), answers[-300:]
    assert [path for path, lingering in begun if lingering] == []
