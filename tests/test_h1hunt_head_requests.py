"""HEAD is served wherever GET is (RFC 9110 9.1: a general-purpose server MUST; 9.3.2: the GET's
status and headers, Content-Length included, without its body). FastAPI's GET routes answered every
HEAD 405 (``curl -I`` on a health route, an uptime monitor's HEAD check)."""

from __future__ import annotations

import socket

import pytest

from serving.app import create_app
from serving.settings import Settings
from tests.repo_fixtures import LiveServer


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    settings = Settings(model_repository=tmp_path_factory.mktemp("empty"), grpc_port=0)
    with LiveServer(create_app(settings)) as server:
        yield server


def exchange(port: int, data: bytes) -> bytes:
    """The bytes answered to ``data`` (whose last request closes the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def split(data: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head, _, rest = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    fields = (line.split(b": ", 1) for line in lines)
    return status, {name.lower(): value for name, value in fields}, rest


@pytest.mark.parametrize("path", [b"/v2/health/live", b"/v2", b"/v1/models", b"/openapi.json"])
def test_head_is_answered_as_get_without_the_body(live, path):
    get = exchange(live.port, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path)
    closing = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    head = exchange(live.port, b"HEAD %s HTTP/1.1\r\nHost: x\r\n\r\n%s" % (path, closing))
    get_status, get_headers, body = split(get)
    status, headers, rest = split(head)
    assert status == get_status and get_status.startswith(b"HTTP/1.1 200 "), head
    assert headers[b"content-length"] == get_headers[b"content-length"] == b"%d" % len(body)
    assert headers.get(b"content-type") == get_headers.get(b"content-type")
    assert rest.startswith(b"HTTP/1.1 200 "), rest  # no body: the next answer follows the head


def test_head_on_a_post_only_route_is_405_allowing_post(live):
    answer = exchange(live.port, b"HEAD /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, rest = split(answer)
    assert status.startswith(b"HTTP/1.1 405 ") and headers[b"allow"] == b"POST" and rest == b"", answer


def test_a_405_on_a_get_route_allows_head_too(live):
    answer = exchange(
        live.port,
        b"POST /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    )
    status, headers, _ = split(answer)
    assert status.startswith(b"HTTP/1.1 405 ") and headers[b"allow"] == b"GET, HEAD", answer
