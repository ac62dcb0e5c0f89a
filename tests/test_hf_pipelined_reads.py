"""Pipelined HTTP/1.1 requests are read one read at a time: while requests of a connection wait their
turn, the gateway reads no more of it. uvicorn resumed reading after every answer (and every body
read), and each read has all of its requests parsed and queued, so a client sending pipelined requests
faster than it read their answers had everything it sent read and held: 12 MB of 41-byte GETs on one
connection queued 292 000 requests and grew the gateway by 690 MB within 3 s."""

from __future__ import annotations

import re
import socket
import time

import pytest
from fastapi import FastAPI, Request, Response

from serving.protocol.http1 import http_protocol
from tests.pipelining import send_until_full
from tests.repo_fixtures import LiveServer

READ_BYTES = 256 * 1024  # the most one read hands the protocol (asyncio: 256 KiB, uvloop: 256 000 bytes)
SENT_BYTES = 1_000_000  # ~20 000-30 000 requests: all of them queued before the fix
GET = b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok"


def app() -> FastAPI:
    made = FastAPI()

    @made.get("/live")
    async def live() -> Response:
        return Response(b"", status_code=200)

    @made.post("/echo")
    async def echo(request: Request) -> Response:  # reads its body: uvicorn resumed reading there too
        return Response(await request.body())

    return made


@pytest.fixture(scope="module")
def served():
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn serves with h11, which parses a request at a time")
    queued = [0, 0]  # the most parsed requests a connection held unanswered; requests parsed

    class Counting(protocol):
        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            queued[0] = max(queued[0], len(self.pipeline))
            queued[1] += 1

    with LiveServer(app(), http=Counting) as server:
        server.queued = queued
        yield server


@pytest.mark.parametrize("request_bytes", [GET, POST], ids=["get", "post-with-body"])
def test_a_client_not_reading_its_answers_has_at_most_one_read_of_requests_queued(served, request_bytes):
    served.queued[:] = [0, 0]
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # answers left unread, as a slow client's
        send_until_full(sock, request_bytes * (SENT_BYTES // len(request_bytes)))  # until it stops reading
        parsed, give_up = 0, time.monotonic() + 10  # a failure bound, never waited out
        while (not parsed or served.queued[1] != parsed) and time.monotonic() < give_up:
            parsed = served.queued[1]  # until it has parsed what it read (none more in 0.3 s)
            time.sleep(0.3)
    assert served.queued[0] > 1  # pipelined indeed
    assert served.queued[0] <= READ_BYTES // len(request_bytes), served.queued[0]


def test_pipelined_requests_are_all_answered_in_order(served):
    count = 5000
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall((GET + POST) * count)  # ~370 KB: more than one read
        answers = b""
        while answers.count(b"HTTP/1.1 ") < 2 * count:
            chunk = sock.recv(1 << 20)
            assert chunk, answers[-300:]
            answers += chunk
    assert re.findall(rb"HTTP/1.1 (\d+)", answers) == [b"200"] * (2 * count)
    assert answers.count(b"\r\n\r\nok") == count  # each POST's own body, after each GET's empty one
