"""A keep-alive request that crosses the stop signal is answered (``connection: close``), not reset.

At a stop, uvicorn's drain closes every HTTP connection with no request in progress. A keep-alive
client's next request that had already reached the gateway (its bytes in the socket, or its head half
read) when the drain began was closed unread, which resets the connection: the client got ECONNRESET
(or EPIPE) for a request never served, with nothing telling it that a retry is safe, in every rolling
update whose pod still had keep-alive clients (Kubernetes removes its endpoints, not its connections).
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.repo_fixtures import CHANNELS, SIZE, LiveServer, classifier_gateway

GET = b"GET / HTTP/1.1\r\nHost: gateway\r\n\r\n"


async def hello(scope: dict, receive: Callable, send: Callable) -> None:
    """The smallest ASGI app answering every request ``hello`` (served through uvicorn's cycle)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})


@pytest.fixture
def server() -> Iterator[LiveServer]:
    with LiveServer(hello) as live:  # the gateway's HTTP protocol (serving.protocol.http1)
        yield live


def answer(client: socket.socket) -> bytes:
    """Everything the server writes until it closes the connection (a reset fails the test)."""
    client.settimeout(30)  # a failure bound, never waited out
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    return data


def one_answer(client: socket.socket, request: bytes) -> bytes:
    client.sendall(request)
    client.settimeout(30)
    data = b""
    while not data.endswith(b"hello") and not data.endswith(b"}"):
        chunk = client.recv(65536)
        assert chunk, data
        data += chunk
    return data


def drain_begins(protocol: object, before: Callable[[], None] = lambda: None) -> None:
    """On the server's loop, in one callback: ``before()``, then the drain's call on this connection
    (what uvicorn's shutdown calls on every connection as the stop begins). Waits until it ran."""
    ran = threading.Event()

    def callback() -> None:
        try:
            before()
            protocol.shutdown()  # type: ignore[attr-defined]
        finally:
            ran.set()

    protocol.loop.call_soon_threadsafe(callback)  # type: ignore[attr-defined]
    assert ran.wait(30)


def arrived_unread(protocol: object, request: bytes, client: socket.socket) -> Callable[[]]:
    """Send ``request`` and wait until its bytes are in the server's socket, before its loop reads them."""

    def send() -> None:
        client.sendall(request)
        server_side = protocol.transport.get_extra_info("socket")  # type: ignore[attr-defined]
        assert select.select([server_side.fileno()], [], [], 30)[0], "the request never arrived"

    return send


def test_a_keep_alive_request_already_in_the_socket_when_the_drain_begins_is_answered_and_closed(
    server: LiveServer,
) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        first = one_answer(client, GET)
        assert first.startswith(b"HTTP/1.1 200") and b"connection: close" not in first.lower()
        (protocol,) = server.server.server_state.connections
        drain_begins(protocol, arrived_unread(protocol, GET, client))
        last = answer(client)
    assert last.startswith(b"HTTP/1.1 200"), last
    assert b"connection: close" in last.lower() and last.endswith(b"hello")


def test_a_request_whose_head_is_half_read_when_the_drain_begins_is_answered_once_it_is_whole(
    server: LiveServer,
) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        one_answer(client, GET)
        (protocol,) = server.server.server_state.connections
        drain_begins(protocol, arrived_unread(protocol, GET[:20], client))
        client.sendall(GET[20:])
        last = answer(client)
    assert last.startswith(b"HTTP/1.1 200") and b"connection: close" in last.lower(), last


def test_an_idle_keep_alive_connection_is_still_closed_as_soon_as_the_drain_begins(
    server: LiveServer,
) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        one_answer(client, GET)
        (protocol,) = server.server.server_state.connections
        drain_begins(protocol)
        assert answer(client) == b""  # closed at once: the drain does not wait on an idle client


def test_a_lean_inference_request_crossing_the_drain_is_answered_and_closed(tmp_path: Path) -> None:
    """The same through the gateway's own path for inference (a v2 infer answered by the protocol)."""
    image = np.zeros((1, SIZE, SIZE, CHANNELS), np.uint8)
    body = b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": %s, "data": %s}]}' % (
        str(list(image.shape)).encode(),
        str(image.ravel().tolist()).encode(),
    )
    request = (
        b"POST /v2/models/lenet/infer HTTP/1.1\r\nHost: gateway\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    with classifier_gateway(tmp_path) as live, socket.create_connection(("127.0.0.1", live.port)) as client:
        first = one_answer(client, request)
        assert first.startswith(b"HTTP/1.1 200"), first
        (protocol,) = live.server.server_state.connections
        drain_begins(protocol, arrived_unread(protocol, request, client))
        last = answer(client)
    assert last.startswith(b"HTTP/1.1 200") and b"connection: close" in last.lower(), last[:300]
