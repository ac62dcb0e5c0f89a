"""serving.protocol.http1 answers the lean routes without uvicorn's ASGI cycle: the same answers as the
cycle gives (status, headers, body, errors), HTTP/1.1's keep-alive and pipelining kept, and every other
request (and a lean one it cannot take whole) left to uvicorn."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import threading

import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask

from serving.protocol import lean
from serving.protocol.http1 import http_protocol
from tests.repo_fixtures import LiveServer

LIMIT = 4096
background_runs = threading.Semaphore(0)  # released by each background task run
entered, released = threading.Event(), threading.Event()  # a request held in its endpoint ("hold")
stopping = threading.Event()  # set once the server has told its connections it stops


class Refused(Exception):
    pass


async def echo(request: Request, name: str) -> Response:
    body = await request.body()
    if body == b"refuse":
        raise Refused(name)
    if body == b"crash":
        raise RuntimeError("boom")
    if body == b"hold":
        entered.set()
        await asyncio.get_running_loop().run_in_executor(None, released.wait, 30)
    task = BackgroundTask(background_runs.release) if body == b"later" else None
    answer = {"name": name, "echo": body.decode(), "query": request.scope["query_string"].decode()}
    return JSONResponse(answer, headers={"x-kiln": "yes"}, background=task)


class App(FastAPI):
    def build_middleware_stack(self):
        stack = super().build_middleware_stack()
        return lean.LeanRoutes(self, stack, LIMIT, (lean.LeanRoute("/v1/models/", "/echo", echo),))


def make_app(handle_runtime_errors: bool = False) -> FastAPI:
    app = App()

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"error": f"{exc} refused"}, status_code=422, headers={"retry-after": "1"})

    if handle_runtime_errors:

        @app.exception_handler(RuntimeError)
        async def unexpected(request: Request, exc: RuntimeError) -> JSONResponse:
            return JSONResponse({"error": str(exc)}, status_code=500)

    @app.get("/other")
    async def other() -> dict:
        return {"other": True}

    return app


@pytest.fixture
def served():
    """A live server over the test app, and the lean requests it answered without the ASGI cycle."""
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn serves with h11, which has no direct path")
    direct: list[str] = []

    class Counted(protocol):
        async def _answer(self, cycle):
            direct.append(cycle.scope["path"])
            await super()._answer(cycle)

        def shutdown(self):
            super().shutdown()
            stopping.set()

    with LiveServer(make_app(), http=Counted) as live:
        yield live, direct


def exchange(port: int, raw: bytes, answers: int = 1) -> list[tuple[int, dict[str, str], bytes]]:
    """Send ``raw`` bytes, read ``answers`` HTTP/1.1 responses: status, headers (date left out), body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw)
        reader = sock.makefile("rb")
        out = []
        for _ in range(answers):
            status = int(reader.readline().split()[1])
            headers = {}
            while (line := reader.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value.strip()
            body = reader.read(int(headers.get("content-length", 0)))
            headers.pop("date", None)
            out.append((status, headers, body))
        return out


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def chunked(path: str, body: bytes) -> bytes:
    """The same request with a chunked body: uvicorn's cycle answers it (the direct path needs a length)."""
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    return head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


@pytest.mark.parametrize("body", [b"hello", b"refuse", b"later"])
def test_a_lean_request_is_answered_directly_exactly_as_the_asgi_cycle_answers_it(served, body):
    live, direct = served
    (fast,) = exchange(live.port, post("/v1/models/m/echo?x=1", body))
    (slow,) = exchange(live.port, chunked("/v1/models/m/echo?x=1", body))
    assert direct == ["/v1/models/m/echo"]  # the chunked one went through uvicorn's cycle
    assert fast == slow
    status, headers, answer = fast
    if body == b"refuse":
        assert (status, json.loads(answer)) == (422, {"error": "m refused"})
        assert headers["retry-after"] == "1"
    else:
        assert (status, json.loads(answer)) == (200, {"name": "m", "echo": body.decode(), "query": "x=1"})
        assert headers["x-kiln"] == "yes" and headers["server"] == "uvicorn"
    if body == b"later":
        assert all(background_runs.acquire(timeout=30) for _ in range(2))  # after each answer, both ways


def test_a_lean_request_writes_the_access_line_uvicorns_cycle_writes():
    from uvicorn.logging import AccessFormatter

    lines: list[str] = []

    class Formatted(logging.Handler):  # formats as uvicorn's default access handler does
        def emit(self, record: logging.LogRecord) -> None:
            try:
                lines.append(self.format(record))
            except Exception as exc:  # noqa: BLE001 - what logging would print as "--- Logging error ---"
                lines.append(f"error: {exc!r}")

    handler = Formatted()
    handler.setFormatter(
        AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False)
    )
    access = logging.getLogger("uvicorn.access")
    with LiveServer(make_app(), log_level="info") as live:  # the gateway's default level: access log on
        access.addHandler(handler)
        try:
            exchange(live.port, post("/v1/models/m/echo?x=1", b"hello"))
            exchange(live.port, chunked("/v1/models/m/echo?x=1", b"hello"))
        finally:
            access.removeHandler(handler)
    assert [line.split(" - ", 1)[1] for line in lines] == ['"POST /v1/models/m/echo?x=1 HTTP/1.1" 200 OK'] * 2


def test_keep_alive_and_pipelined_requests_are_answered_in_order_on_one_connection(served):
    live, direct = served
    raw = post("/v1/models/a/echo", b"1") + post("/v1/models/b/echo", b"2") + b"GET /other HTTP/1.1\r\n"
    raw += b"Host: x\r\n\r\n" + post("/v1/models/c/echo", b"3")
    answers = exchange(live.port, raw, answers=4)
    assert [json.loads(body) for _, _, body in answers] == [
        {"name": "a", "echo": "1", "query": ""},
        {"name": "b", "echo": "2", "query": ""},
        {"other": True},
        {"name": "c", "echo": "3", "query": ""},
    ]
    # the first directly; those read while an answer was pending queue behind it in uvicorn's pipeline
    assert direct == ["/v1/models/a/echo"]
    connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
    for i in range(3):
        connection.request("POST", "/v1/models/k/echo", body=str(i).encode())
        assert json.loads(connection.getresponse().read())["echo"] == str(i)
    connection.close()
    assert direct[1:] == ["/v1/models/k/echo"] * 3  # one after the other: each directly


def test_http_1_0_and_connection_close_end_the_connection_after_the_answer(served):
    live, direct = served
    for raw in (
        b"POST /v1/models/m/echo HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi",
        post("/v1/models/m/echo", b"hi", "Connection: close\r\n"),
    ):
        with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
            sock.sendall(raw)
            received = b""
            while chunk := sock.recv(65536):  # the server closes: recv returns b"" at the end
                received += chunk
        assert received.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: close\r\n" in received
        assert received.endswith(b'"echo":"hi","query":""}')
    assert len(direct) == 2


def test_what_the_direct_path_cannot_take_whole_goes_through_uvicorn(served):
    live, direct = served
    too_large = b"x" * (LIMIT + 1)
    (status, _, body) = exchange(live.port, post("/v1/models/m/echo", too_large))[0]
    assert status == 413 and b"byte limit" in body
    (status, _, body) = exchange(live.port, post("/v1/models/m%20n/echo", b"q"))[0]
    assert status == 200 and json.loads(body)["name"] == "m n"  # percent-encoded: uvicorn decodes it
    (status, _, _) = exchange(live.port, post("/v1/models/m/echo", b"q", "Expect: 100-continue\r\n"), 2)[1]
    assert status == 200  # "100 Continue" first, from uvicorn
    (status, _, _) = exchange(live.port, post("/v1/models/m/other", b"q"))[0]
    assert status in (404, 405)  # not a lean route: the router's answer
    assert direct == []


def test_an_error_without_a_handler_is_a_500_that_closes_the_connection_as_uvicorn_does(served):
    live, direct = served
    fast = exchange(live.port, post("/v1/models/m/echo", b"crash"))
    slow = exchange(live.port, chunked("/v1/models/m/echo", b"crash"))
    assert fast == slow == [(500, fast[0][1], b"Internal Server Error")]
    assert fast[0][1]["connection"] == "close" and direct == ["/v1/models/m/echo"]
    (status, _, _) = exchange(live.port, post("/v1/models/m/echo", b"after"))[0]
    assert status == 200  # the server goes on


def test_without_a_lean_layer_every_request_goes_through_uvicorn():
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed")
    plain = FastAPI()

    @plain.post("/v1/models/{name}/echo")
    async def route(name: str) -> dict:
        return {"name": name}

    direct: list[str] = []

    class Counted(protocol):
        async def _answer(self, cycle):
            direct.append(cycle.scope["path"])
            await super()._answer(cycle)

    with LiveServer(plain, http=Counted) as live:
        (status, _, body) = exchange(live.port, post("/v1/models/m/echo", b""))[0]
    assert (status, json.loads(body), direct) == (200, {"name": "m"}, [])


def test_a_server_stopping_finishes_a_direct_answer_in_flight_then_closes_its_connection(served):
    live, direct = served
    entered.clear(), released.clear(), stopping.clear()
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
        sock.sendall(post("/v1/models/m/echo", b"hold"))
        assert entered.wait(30)
        live.server.should_exit = True  # uvicorn's graceful stop, with the answer still to come
        assert stopping.wait(30)
        released.set()
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: close\r\n" in received
    assert received.endswith(b'"echo":"hold","query":""}') and direct == ["/v1/models/m/echo"]
    live.thread.join(timeout=60)
    assert not live.thread.is_alive()
