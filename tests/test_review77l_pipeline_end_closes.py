"""A pipeline whose last request ends the connection (its ``Connection: close``, or the drain's last
answer at a stop) with nothing of the client's left unread is not held ``LINGER_S``: it lingers only
``QUIET_LINGER_S`` for what the client may still be sending (a plain close reset a client still sending).
It lingered (our FIN, then the client's FIN or ``LINGER_S``, 2 s): reading stays paused while the last
request of a pipeline is answered (:class:`~serving.protocol.http1_httptools.QueuedRequestsFirst`), and
the close read that pause as requests left unread, so a client that keeps its socket after the answer
held the connection, and the server's stop, 2 s. Requests pipelined behind such an answer still make it
linger (tests/test_hi2_pipelined_close.py, tests/test_hm_drain_pipelined.py)."""

from __future__ import annotations

import socket
import threading

import pytest
from fastapi import Response

from serving.protocol.http1 import http_protocol
from serving.protocol.http1_heads import LINGER_S
from tests.repo_fixtures import LiveServer
from tests.test_http1_direct import make_app

GET = b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n"
CLOSE = b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
LEAN = b"POST /v1/models/m/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n%s\r\nhi"
DRAINED = b"GET /drain HTTP/1.1\r\nHost: x\r\n\r\n"  # its handler begins the server's drain


def served(lost: threading.Event, lingered: list):
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn serves with h11")
    connections: list = []

    class Watched(protocol):
        def connection_made(self, transport) -> None:  # noqa: ANN001
            super().connection_made(transport)
            connections.append(self)

        def _linger(self, *args: float) -> None:
            lingered.append(True)
            super()._linger(*args)

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            lost.set()

    app = make_app()

    @app.get("/drain")
    async def drain() -> Response:
        (conn,) = connections
        conn.shutdown()  # the stop begins while this, the pipeline's last request, is answered
        return Response(b"D")

    return LiveServer(app, http=Watched, log_level="critical")


def answers_then_close_time(pipeline: bytes) -> tuple[bytes, bool, bool]:
    """Everything the gateway answers to ``pipeline`` (sent in one write) up to its end of the stream,
    whether the server then closed without waiting for our FIN (kept), and whether it lingered."""
    lost, lingered = threading.Event(), []
    with (
        served(lost, lingered) as live,
        socket.create_connection(("127.0.0.1", live.port)) as sock,
    ):
        sock.settimeout(10)  # a failure bound
        sock.sendall(pipeline)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        closed = lost.wait(LINGER_S / 2)  # our socket kept open meanwhile (QUIET_LINGER_S is less)
    return data, closed, bool(lingered)


@pytest.mark.parametrize(
    "pipeline",
    [GET + CLOSE, GET * 3 + CLOSE, LEAN % b"" + CLOSE],
    ids=["one-before", "three-before", "after-a-lean-answer"],
)
def test_a_pipeline_ending_with_connection_close_closes_at_once(pipeline):
    data, closed, lingered = answers_then_close_time(pipeline)
    assert data.count(b"HTTP/1.1 200 ") == pipeline.count(b"Host: x"), data
    assert data.count(b"connection: close\r\n") == 1, data
    assert closed, "the connection was held LINGER_S with nothing of the client's unread"


def test_the_drains_last_answer_to_a_pipeline_closes_at_once():
    data, closed, lingered = answers_then_close_time(GET + DRAINED)
    assert data.count(b"HTTP/1.1 200 ") == 2 and data.endswith(b"\r\n\r\nD"), data
    assert b"connection: close\r\n" in data
    assert closed, "the drain held the connection LINGER_S with nothing of the client's unread"
