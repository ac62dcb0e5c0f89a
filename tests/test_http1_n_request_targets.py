"""A request target the HTTP/1.1 protocol cannot read (CONNECT's ``host:port``, an absolute URL whose
authority does not parse) gets a 400 naming the target: the parser's exception, raised in uvicorn's
callback, reached the client as llhttp's "User callback error", which names nothing the client sent.
A request answered before it on the connection keeps its own answer."""

from __future__ import annotations

import json
import socket

import pytest
from fastapi import FastAPI

from serving.protocol.http1 import http_protocol
from tests.repo_fixtures import LiveServer

READY = b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def live():
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn serves with h11")
    app = FastAPI()

    @app.get("/ready")
    async def ready() -> dict:
        return {"ready": True}

    with LiveServer(app, http=protocol) as server:
        yield server


def exchange(live: LiveServer, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


@pytest.mark.parametrize(
    "line, target",
    [(b"CONNECT x:443 HTTP/1.1", "x:443"), (b"GET http://[::1/ready HTTP/1.1", "http://[::1/ready")],
)
def test_a_target_that_does_not_parse_gets_a_400_naming_it(live, line, target):
    answer = exchange(live, READY + line + b"\r\nHost: x\r\n\r\n")
    first, _, second = answer.partition(b"HTTP/1.1 400 Bad Request\r\n")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b'{"ready":true}'), answer
    error = json.loads(second.partition(b"\r\n\r\n")[2])["error"]
    assert error.startswith("invalid HTTP request: request target") and target in error, error
    assert "User callback error" not in error
