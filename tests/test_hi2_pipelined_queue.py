"""What one read of pipelined requests may queue: at most ``QUEUED_REQUESTS`` parsed and waiting their
turn, the rest of the read kept unparsed until they are answered. One read of tiny requests was parsed
and queued whole (41-byte GETs: ~6 000 in a 256 KB read, 8 257 seen), holding the event loop 0.2-0.4 s
in one callback while every other connection waited, and each request's cycle until answered."""

from __future__ import annotations

import re
import socket

import pytest
from fastapi import FastAPI, Request, Response

from serving.protocol.http1 import http_protocol
from serving.protocol.http1_httptools import QUEUED_REQUESTS
from tests.repo_fixtures import LiveServer

GET = b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n"
CRLFS = b"\r\n\r\n" * 50  # a body full of what ends a head: parsed as a body all the same
POST = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(CRLFS), CRLFS)
CHUNKED = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
UPLOAD = b"u" * 300_000  # longer than a read: its end arrives in a later one
BIG = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(UPLOAD), UPLOAD)


def app() -> FastAPI:
    made = FastAPI()

    @made.get("/live")
    async def live() -> Response:
        return Response(b"")

    @made.post("/echo")
    async def echo(request: Request) -> Response:
        body = await request.body()
        return Response(str(len(body)).encode() + b":" + body[:3])

    return made


@pytest.fixture(scope="module")
def served():
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn serves with h11, which parses a request at a time")
    queued = [0]  # the most parsed requests a connection held waiting their turn

    class Counting(protocol):
        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            queued[0] = max(queued[0], len(self.pipeline))

    with LiveServer(app(), http=Counting) as server:
        server.queued = queued
        yield server


def answers(served, sent: bytes, count: int) -> list[bytes]:
    """The statuses and bodies of the ``count`` answers to ``sent``, in order."""
    served.queued[0] = 0
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(sent)  # in reads of up to 256 KB
        data = b""
        while data.count(b"HTTP/1.1 ") < count or not data.endswith((b"\r\n\r\n", b"uuu")):
            chunk = sock.recv(1 << 20)
            assert chunk, data[-300:]
            data += chunk
    return re.findall(rb"HTTP/1.1 (\d+) .*?content-length: \d+\r\n\r\n([^H]*)", data, re.S)


def test_one_read_of_tiny_requests_queues_at_most_the_bound(served):
    count = 6000  # 246 KB of GETs: one read, or a few
    got = answers(served, GET * count, count)
    assert got == [(b"200", b"")] * count
    assert 1 < served.queued[0] <= QUEUED_REQUESTS + 1, served.queued[0]  # 6 000 parsed at once before


def test_requests_kept_unparsed_are_answered_in_order_bodies_and_all(served):
    burst = (GET + POST + CHUNKED) * 1000 + BIG + GET * 100  # a body that ends reads past the bound
    got = answers(served, burst, 3100 + 1)
    expected = [(b"200", b""), (b"200", b"%d:\r\n\r" % len(CRLFS)), (b"200", b"3:abc")] * 1000
    assert got == [*expected, (b"200", b"300000:uuu"), *[(b"200", b"")] * 100]
    assert served.queued[0] <= QUEUED_REQUESTS + 1, served.queued[0]
