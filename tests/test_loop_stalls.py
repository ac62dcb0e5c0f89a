"""One request never holds the event loop for the others: work that grows with one request's size is
done without copying it on the loop (each check says where it ran, never how long it took)."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI, Request, Response

from serving.protocol import lean
from serving.protocol.http1 import http_protocol
from serving.protocol.http1_writes import JOIN_BYTES, CoalescedWrites
from tests.repo_fixtures import LiveServer
from tests.test_http1 import FakeTransport
from tests.test_http1_direct import exchange, post

LARGE = b"x" * (4 * JOIN_BYTES)  # an answer as large as a KServe v2 one of millions of values


def test_a_large_piece_reaches_the_transport_uncopied_and_small_ones_still_joined():
    async def main() -> list[bytes]:
        transport = FakeTransport()
        writes = CoalescedWrites(transport, asyncio.get_running_loop())
        for part in (b"HTTP/1.1 200 OK\r\n", b"\r\n", LARGE, b"tail", b"!"):
            writes.write(part)
        await asyncio.sleep(0)  # the step ends: what it wrote is flushed
        return transport.writes

    written = asyncio.run(main())
    assert written == [b"HTTP/1.1 200 OK\r\n\r\n", LARGE, b"tail!"]
    assert written[1] is LARGE  # not joined: joining copied it on the event loop


async def large(request: Request, name: str) -> Response:
    return Response(LARGE, media_type="application/octet-stream")


class App(FastAPI):
    def build_middleware_stack(self):
        stack = super().build_middleware_stack()
        return lean.LeanRoutes(self, stack, 4096, (lean.LeanRoute("/v1/models/", "/large", large),))


@pytest.fixture
def recorded():
    """A live server over an app with a large answer on a lean route and on a plain one, and every
    object its connections wrote to their sockets."""
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn serves with h11, which has no direct path")
    written: list[bytes] = []

    class Recorder:
        def __init__(self, transport) -> None:
            self._transport = transport

        def write(self, data: bytes) -> None:
            written.append(data)
            self._transport.write(data)

        def __getattr__(self, name: str) -> object:
            return getattr(self._transport, name)

    class Recorded(protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(Recorder(transport))

    app = App()

    @app.get("/plain")
    async def plain() -> Response:
        return Response(LARGE, media_type="application/octet-stream")

    with LiveServer(app, http=Recorded) as live:
        yield live, written


@pytest.mark.parametrize(
    "raw",
    [post("/v1/models/m/large", b"{}"), b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n"],
    ids=["lean", "asgi"],
)
def test_a_large_answer_is_written_to_the_socket_as_the_app_made_it(recorded, raw):
    live, written = recorded
    ((status, headers, body),) = exchange(live.port, raw)
    assert status == 200 and body == LARGE and headers["content-type"] == "application/octet-stream"
    assert any(w is LARGE for w in written)  # its own write, not copied behind its head
