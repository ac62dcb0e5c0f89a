"""An answer cut short (an app that raised, or returned, after it began its answer) with requests
pipelined behind it: uvicorn closes the connection, and that close lingers (our FIN, the client's later
bytes dropped), but reading stayed paused for the queued requests, which resumes only once an answer
completes, and this one never does. So the client's FIN went unread and the connection was held
LINGER_S whatever the client did, then closed with the client's later bytes unread: a reset that
discarded the answers before the cut one still in the gateway's socket (a client that pipelined 100
GETs, a cut stream and more GETs, reading slowly, got 5 answers, then ``ECONNRESET``)."""

from __future__ import annotations

import socket
import threading

import pytest
from fastapi.responses import StreamingResponse

from serving.protocol.http1 import http_protocol
from serving.protocol.http1_heads import LINGER_S
from tests.repo_fixtures import LiveServer
from tests.test_http1_direct import make_app

GET = b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n"
CUT = b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n"  # its answer begins, then its stream raises


def served(lost: threading.Event) -> LiveServer:
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn serves with h11")

    class Watched(protocol):  # type: ignore[misc, valid-type]
        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            lost.set()

    app = make_app()

    @app.get("/cut")
    async def cut() -> StreamingResponse:
        async def chunks():  # noqa: ANN202
            yield b"x" * 10
            raise RuntimeError("the stream failed mid-answer")

        return StreamingResponse(chunks())

    return LiveServer(app, http=Watched, log_level="critical")


def test_a_cut_answer_with_requests_behind_it_closes_at_the_clients_end() -> None:
    lost = threading.Event()
    with served(lost) as live, socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.settimeout(10)  # a failure bound
        sock.sendall(CUT + GET * 3)  # the GETs queued behind the cut answer: reading paused for them
        data = b""
        while chunk := sock.recv(65536):  # to the gateway's end of the stream
            data += chunk
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\nxxxxxxxxxx\r\n"), data
        assert b"0\r\n\r\n" not in data  # no last chunk: the client sees the answer cut short
        sock.sendall(GET)  # a later request: read and dropped, not left to reset the connection
        sock.shutdown(socket.SHUT_WR)
        assert lost.wait(LINGER_S / 2), "the connection was held LINGER_S with the client's FIN unread"
