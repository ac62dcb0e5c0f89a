"""A head that begins partway through a read (pipelined behind another request) is counted against
``max_head`` from its first byte, as one that begins a read is: it was counted from its headers the
parser had handed over only, so the header it was still in (up to a whole read, 256 KB) went
uncounted, and a head that never ended could grow to the limit plus a read before its 431."""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest
from fastapi import FastAPI, Request, Response

from serving.protocol.http1 import http_protocol
from serving.protocol.http1_heads import unread_bytes
from tests.pipelining import recv_until
from tests.repo_fixtures import LiveServer

HOLD = b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n"
LIVE = b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n"
ECHO = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n\r\n\r\n"  # a body that looks like a head's end
CHUNKED = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"
BIG = b"GET /big HTTP/1.1\r\nHost: x\r\nx-big: " + b"b" * 100_000  # over 64 KiB, not ended: one read


def served(entered: threading.Event, sent: threading.Event, length: list[int]) -> LiveServer:
    """The gateway, with 1 s to read a head; /hold holds its event loop until what the client sent
    after it lies unread in its socket, so that one read takes it whole."""
    protocol = http_protocol(read_timeout_s=1.0)
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn serves with h11")
    connections = []

    class Kept(protocol):
        def connection_made(self, transport) -> None:  # noqa: ANN001
            super().connection_made(transport)
            connections.append(self)

    app = FastAPI()

    def hold_the_loop() -> None:
        entered.set()
        assert sent.wait(10)  # the loop held (a failure bound)
        give_up = time.monotonic() + 10  # a failure bound, never waited out
        while unread_bytes(connections[0].transport) < length[0] and time.monotonic() < give_up:
            time.sleep(0.005)  # the loop held: nothing is read meanwhile

    @app.get("/hold")
    async def hold() -> Response:
        hold_the_loop()
        return Response(b"H")

    @app.post("/chunks")
    async def chunks(request: Request) -> Response:  # its body's rest arrives in one read
        hold_the_loop()
        return Response(b"%d" % len(await request.body()))

    @app.get("/live")
    async def live() -> Response:
        return Response(b"L")

    @app.post("/echo")
    async def echo() -> Response:
        return Response(b"E")

    return LiveServer(app, http=Kept, log_level="critical")


@pytest.mark.parametrize("before", [LIVE, ECHO, CHUNKED, LIVE + ECHO], ids=["get", "post", "chunked", "two"])
def test_a_head_begun_partway_through_a_read_is_refused_past_the_limit(before):
    entered, sent, length = threading.Event(), threading.Event(), [len(before) + len(BIG)]
    with served(entered, sent, length) as live, socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.settimeout(10)  # a failure bound
        sock.sendall(HOLD)
        assert entered.wait(10)  # /hold holds the loop: nothing more is read (a failure bound)
        sock.sendall(before + BIG)  # read whole once /hold is answered
        sent.set()
        answers = recv_until(sock, b"}")  # the refusal's JSON: 431 (408 after 1 s before the fix)
    statuses = re.findall(rb"HTTP/1.1 (\d+)", answers)
    assert statuses[-1] == b"431", answers[-300:]
    assert len(statuses) == 2 + before.count(b"HTTP/1.1"), answers[-300:]  # each answer before it first


def test_a_head_begun_after_a_body_in_the_same_read_is_not_counted_with_that_body():
    """The request before it had a 60 000-byte body: counting the read from its last head end would
    have taken that body for the head's (70 KB: a 431 for a 10 KB head)."""
    body = b"p" * 60_000
    post = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    head = b"GET /live HTTP/1.1\r\nHost: x\r\nx-pad: " + b"q" * 10_000
    entered, sent, length = threading.Event(), threading.Event(), [len(post) + len(head)]
    with served(entered, sent, length) as live, socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.settimeout(10)  # a failure bound
        sock.sendall(HOLD)
        assert entered.wait(10)  # a failure bound
        sock.sendall(post + head)  # read whole once /hold is answered
        sent.set()
        recv_until(sock, b"\r\n\r\nE")  # the POST answered: the head's beginning was read with it
        sock.sendall(b"\r\n\r\n")
        answers = recv_until(sock, b"\r\n\r\nL")
    assert re.findall(rb"HTTP/1.1 (\d+)", answers) == [b"200"], answers[-300:]


def test_a_head_begun_after_a_chunked_body_in_the_same_read_is_not_counted_with_its_framing():
    """The read began in a chunked body of 12 000 one-byte chunks (72 KB of framing for 12 000 bytes):
    counting from that body's length would have taken its framing for the head's (a 431)."""
    first = b"POST /chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nc\r\n"
    rest = b"1\r\nc\r\n" * 11_999 + b"0\r\n\r\n"
    head = b"GET /live HTTP/1.1\r\nHost: x\r\nx-pad: " + b"q" * 10_000
    entered, sent, length = threading.Event(), threading.Event(), [len(rest) + len(head)]
    with served(entered, sent, length) as live, socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.settimeout(10)  # a failure bound
        sock.sendall(first)
        assert entered.wait(10)  # a failure bound
        sock.sendall(rest + head)  # read whole once /chunks reads its body
        sent.set()
        recv_until(sock, b"\r\n\r\n12000")  # the POST answered: the head's beginning was read with it
        sock.sendall(b"\r\n\r\n")
        answers = recv_until(sock, b"\r\n\r\nL")
    assert re.findall(rb"HTTP/1.1 (\d+)", answers) == [b"200"], answers[-300:]
