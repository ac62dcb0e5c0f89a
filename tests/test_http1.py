"""serving.protocol.http1: a response's headers and body reach the socket in one write, and HTTP/1.1
keeps its meaning (keep-alive, streamed bodies, errors)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket

import pytest

from serving.protocol.http1 import http_protocol
from serving.protocol.http1_writes import CoalescedWrites
from tests.repo_fixtures import LiveServer


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write_eof(self) -> None:
        self.writes.append(b"<eof>")

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 1234)}.get(name, default)


def run_steps(*steps):
    """Run each step (a function of the wrapper and its transport) in its own event-loop step; the
    transport's writes after each step has ended."""

    async def main() -> list[list[bytes]]:
        transport = FakeTransport()
        wrapped = CoalescedWrites(transport, asyncio.get_running_loop())
        seen = []
        for step in steps:
            step(wrapped, transport)
            await asyncio.sleep(0)  # one loop iteration: the flush scheduled by the step runs
            seen.append(list(transport.writes))
        return seen

    return asyncio.run(main())


def test_the_writes_of_one_step_reach_the_transport_as_one_in_order():
    def respond(wrapped, transport):
        wrapped.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        wrapped.write(b"ok")
        assert transport.writes == []  # held until the step ends

    (after,) = run_steps(respond)
    assert after == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]


def test_a_write_in_a_later_step_is_a_write_of_its_own():
    seen = run_steps(lambda w, t: w.write(b"head"), lambda w, t: w.writelines([b"a", b"b"]))
    assert seen == [[b"head"], [b"head", b"ab"]]


def test_close_and_write_eof_send_what_is_held_first():
    def close(wrapped, transport):
        wrapped.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        wrapped.close()
        assert transport.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"] and transport.closed

    def eof(wrapped, transport):
        wrapped.write(b"last")
        wrapped.write_eof()

    assert run_steps(close) == [[b"HTTP/1.1 400 Bad Request\r\n\r\n"]]
    assert run_steps(eof) == [[b"last", b"<eof>"]]


def test_nothing_is_written_to_a_closing_transport():
    def lost(wrapped, transport):
        wrapped.write(b"too late")
        transport.closed = True  # the peer went away before the step ended

    assert run_steps(lost) == [[]]


def test_everything_else_is_the_wrapped_transports():
    async def main() -> object:
        return CoalescedWrites(FakeTransport(), asyncio.get_running_loop()).get_extra_info("peername")

    assert asyncio.run(main()) == ("127.0.0.1", 1234)


async def app(scope, receive, send):
    """/json answers whole; /stream sends two chunks with a loop iteration between; /fail raises."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/fail":
        raise RuntimeError("the app failed")
    if scope["path"] == "/stream":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"first,", "more_body": True})
        await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"second"})
        return
    answer = json.dumps({"echo": body.decode(), "path": scope["path"]}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


class Recorded:
    """A transport recording what reaches it (under CoalescedWrites: what reaches the socket)."""

    writes: list[bytes] = []

    def __init__(self, transport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        Recorded.writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


@pytest.fixture
def server():
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn serves with h11, whose writes this does not join")

    class RecordedProtocol(protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(Recorded(transport))

    Recorded.writes = []
    with LiveServer(app, http=RecordedProtocol) as live:
        yield live


def test_a_whole_response_is_one_write_and_keep_alive_still_serves_the_next(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    for i in range(3):  # one connection: each answer complete before the next request is read
        connection.request("POST", "/json", body=f"request {i}")
        response = connection.getresponse()
        assert response.status == 200
        assert json.loads(response.read()) == {"echo": f"request {i}", "path": "/json"}
    connection.close()
    assert len(Recorded.writes) == 3
    for i, write in enumerate(Recorded.writes):
        assert write.startswith(b"HTTP/1.1 200 OK\r\n") and write.endswith(
            f'"request {i}", "path": "/json"}}'.encode()
        )


def test_a_streamed_body_still_arrives_whole_and_a_failing_app_still_gets_its_500(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", "/stream")
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"first,second")
    assert len(Recorded.writes) == 2  # headers with the first chunk, then the second chunk and the end
    connection.request("GET", "/fail")
    response = connection.getresponse()
    assert (response.status, response.read()) == (500, b"Internal Server Error")
    connection.close()


def test_a_connection_that_never_sends_a_request_is_closed_after_the_keep_alive_allowance():
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn's h11 protocol serves without Kiln's")
    with LiveServer(app, keep_alive_s=1) as live:
        silent = socket.create_connection(("127.0.0.1", live.port), timeout=30)
        talking = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
        try:
            assert silent.recv(1) == b""  # closed by the server, well before the socket's timeout
            talking.request("POST", "/json", body="late but welcome")  # a new connection is served
            assert talking.getresponse().status == 200
        finally:
            silent.close()
            talking.close()
