"""A connection that closes in the middle of a pipeline, after an answer with ``connection: close`` (the
client's ``Connection: close``, a 500 of an app that raised), while the client's later requests lie
unread: that close lingers now, as the drain's does (RFC 9112 9.6: the server closes after the answer to
the request with ``close``, and a client must not lose the answers before it). The plain close it was
reset the connection, as closing a socket with unread bytes does, and the reset discarded the answers
still on their way: a client that pipelined 100 requests, then one with ``Connection: close``, read
5 answers, then ``ECONNRESET``."""

from __future__ import annotations

import re
import socket
import threading

import pytest
from fastapi import Response

from serving.protocol.http1 import http_protocol
from tests.pipelining import ending, send_until_full
from tests.repo_fixtures import LiveServer
from tests.test_http1_direct import make_app

GET = b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n"  # a 2 KB answer: many wait in the gateway's send buffer
CLOSE = b"GET /live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
HTTP10 = b"GET /live HTTP/1.0\r\n\r\n"
BOOM = b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n"
BODY = b"e" * 3000  # a lean answer larger than the client's receive buffer
LEAN = b"POST /v1/models/m/echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(BODY)
LEAN_CLOSE = LEAN + b"Connection: close\r\n\r\n" + BODY
LEAN_CRASH = b"POST /v1/models/m/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\ncrash"


def app():
    made = make_app()

    @made.get("/live")
    async def live() -> Response:
        return Response(b"L" * 2000)

    @made.get("/boom")
    async def boom() -> Response:
        raise RuntimeError("boom")

    return made


def answers_after_the_close(sent: bytes, late: bool = False) -> bytes:
    """Everything the gateway sends for ``sent`` (then as many GETs as the socket takes), read once the
    gateway has ended the connection, to its end (``ConnectionResetError`` before the fix); ``late``:
    the GETs sent only once the gateway has begun to end it (``sent`` alone before)."""
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn serves with h11")
    ended = threading.Event()
    with LiveServer(app(), http=ending(protocol, ended), log_level="critical") as live:
        # room for every answer in the gateway's send buffer, none in the client's: at the close they
        # wait in the gateway's socket, where a reset discards them
        live.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        with socket.create_connection(("127.0.0.1", live.port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            if late:
                sock.sendall(sent)
                assert ended.wait(10)  # the gateway has answered the last request and ends the connection
                send_until_full(sock, GET * 5_000)  # the client's later requests arrive now
            else:
                send_until_full(sock, sent + GET * 20_000)  # ~600 KB: more than one read (256 KB)
                assert ended.wait(10)  # the gateway answered and ended (a failure bound, never waited out)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # now read them at once
            sock.setblocking(True)
            sock.settimeout(10)
            answers = b""
            while chunk := sock.recv(1 << 16):
                answers += chunk
    return answers


@pytest.mark.parametrize("last", [CLOSE, HTTP10], ids=["connection-close", "http-1.0"])
def test_every_answer_up_to_a_pipelined_connection_close_arrives(last):
    answers = answers_after_the_close(GET * 100 + last)
    statuses = re.findall(rb"HTTP/1.[01] (\d+)", answers)
    assert statuses == [b"200"] * 101, (len(statuses), answers[-300:])
    assert answers.endswith(b"connection: close\r\n\r\n" + b"L" * 2000), answers[-300:]


def test_every_answer_up_to_a_pipelined_500_arrives():
    answers = answers_after_the_close(GET * 100 + BOOM)
    statuses = re.findall(rb"HTTP/1.1 (\d+)", answers)
    assert statuses == [b"200"] * 100 + [b"500"], (len(statuses), answers[-300:])
    assert answers.endswith(b"Internal Server Error"), answers[-300:]


@pytest.mark.parametrize(
    ("first", "status", "end"),
    [(LEAN_CLOSE, b"200", b'"query":""}'), (LEAN_CRASH, b"500", b"Internal Server Error")],
    ids=["connection-close", "500"],
)
def test_a_lean_answer_that_closes_with_requests_behind_it_arrives_whole(first, status, end):
    answers = answers_after_the_close(first)
    assert re.findall(rb"HTTP/1.1 (\d+)", answers) == [status], answers[-300:]
    assert b"connection: close\r\n" in answers and answers.endswith(end), answers[-300:]


def test_a_write_after_the_end_of_the_stream_is_dropped_as_after_a_close():
    """A lingering close (``write_eof``) while a pipelined request's answer is under way (a 500 that
    Starlette wrote before the exception reached uvicorn, which then closes): that answer's write
    raised "Cannot call write() after write_eof()" from the event loop."""
    import asyncio

    from serving.protocol.http1_writes import CoalescedWrites

    class EndedTransport:
        def __init__(self) -> None:
            self.writes: list[bytes] = []
            self.ended = False

        def write(self, data: bytes) -> None:
            if self.ended:
                raise RuntimeError("Cannot call write() after write_eof()")
            self.writes.append(data)

        def write_eof(self) -> None:
            self.ended = True

        def is_closing(self) -> bool:
            return False

    async def main() -> list[bytes]:
        transport = EndedTransport()
        wrapped = CoalescedWrites(transport, asyncio.get_running_loop())
        wrapped.write(b"answer")
        wrapped.write_eof()
        wrapped.write(b"late")  # held, then flushed at the end of the step
        wrapped.write_eof()
        await asyncio.sleep(0)
        wrapped.flush()
        return transport.writes

    assert asyncio.run(main()) == [b"answer"]
