"""A path with a trailing slash is a JSON 404, as Triton answers it, never a redirect: Starlette's 307
for ``GET /v2/health/live/`` or ``POST /v2/models/m/infer/`` wrote the client's ``Host`` header into
its ``Location`` (``http://evil.example/v2/health/live``: an open redirect a cache in front could keep
for other clients, and ``http://`` behind a TLS ingress), and a client following it re-sent its body
there."""

from __future__ import annotations

import json
import socket

import pytest

from serving.app import create_app
from serving.settings import Settings
from tests.repo_fixtures import LiveServer


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    settings = Settings(model_repository=tmp_path_factory.mktemp("empty"), grpc_port=0)
    with LiveServer(create_app(settings)) as live:
        yield live


def answer(live, method: str, target: str) -> tuple[bytes, bytes]:
    """One request written byte for byte with a Host of the client's choosing: its head and body."""
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
        sock.sendall(
            f"{method} {target} HTTP/1.1\r\nHost: evil.example\r\nContent-Type: application/json\r\n"
            f"Content-Length: 2\r\nConnection: close\r\n\r\n{{}}".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(
    "target", ["/v2/health/live/", "/v2/", "/v2/models/m/", "/v2/models/m/infer/", "/metrics/"]
)
def test_a_trailing_slash_is_a_json_404_without_the_clients_host_in_a_location(gateway, method, target):
    head, body = answer(gateway, method, target)
    assert head.startswith(b"HTTP/1.1 404 "), head
    assert b"location:" not in head.lower() and b"evil.example" not in head, head
    assert json.loads(body) == {"error": "Not Found"}


def test_the_paths_without_the_slash_are_served_as_before(gateway):
    head, _ = answer(gateway, "GET", "/v2/health/live")
    assert head.startswith(b"HTTP/1.1 200 "), head
    head, body = answer(gateway, "POST", "/v2/models/m/infer")
    assert head.startswith(b"HTTP/1.1 404 "), head  # routed: the route's own 404, naming the model
    assert json.loads(body)["error"].startswith("unknown model 'm'")
