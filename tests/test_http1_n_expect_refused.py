"""A request with ``Expect: 100-continue`` that the gateway answers before asking for its body (a 413
from its Content-Length) closes the connection: its client may send that body or not (RFC 9110
10.1.1), so the gateway cannot tell where its next request would begin. The connection was kept
open: the client's next request was read as the refused body, never served, and the client got the
408 of a body that never came as its answer (the one request answered twice)."""

from __future__ import annotations

import json
import socket

import pytest

from serving.app import create_app
from serving.protocol.http1 import http_protocol
from serving.settings import Settings
from tests.repo_fixtures import LiveServer

LIMIT = 1024
READY = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn serves with h11")
    settings = Settings(model_repository=tmp_path_factory.mktemp("empty"), max_body_bytes=LIMIT, grpc_port=0)
    with LiveServer(create_app(settings), http=protocol) as server:
        yield server


def expecting(length: int, path: bytes = b"/v2/models/m/infer") -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (path, length)
    )


def read_response(sock: socket.socket, data: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """One whole response (its head, its body) from ``data`` and then the socket, and what follows."""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 100 "):
        return read_response(sock, rest)
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.startswith(b"content-length")
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        rest += chunk
    return head, rest[:length], rest[length:]


def test_a_body_refused_before_it_was_asked_for_closes_the_connection(live):
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
        sock.sendall(expecting(LIMIT + 1))  # the body held back until the gateway asks for it
        head, body, rest = read_response(sock)
        assert head.startswith(b"HTTP/1.1 413 "), head
        assert "byte limit" in json.loads(body)["error"]
        assert b"\r\nconnection: close" in head.lower(), head  # the client does not send the next here
        while chunk := sock.recv(65536):  # the gateway ends its half: nothing more is answered
            rest += chunk
        assert rest == b""


def test_a_body_asked_for_with_100_continue_keeps_the_connection(live):
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
        sock.sendall(expecting(2, b"/v2/repository/index"))
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(b"{}" + READY)
        head, _, rest = read_response(sock)
        assert b"connection: close" not in head.lower(), head
        head, _, _ = read_response(sock, rest)
        assert head.startswith(b"HTTP/1.1 200 "), head
