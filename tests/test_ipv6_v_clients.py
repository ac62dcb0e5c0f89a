"""How the HTTP server names its clients on IPv6 sockets: an IPv4 client of ``--host ::`` (dual stack)
as its IPv4 address, as Go writes it and as the gRPC server's separate IPv4 socket already shows it
(uvicorn wrote ``[::ffff:127.0.0.1]:port`` and did not trust a local proxy's X-Forwarded-For), and an
IPv6 client of a refused request in brackets (``::1:5555`` does not say which part is the port)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from serving.protocol.http1 import http_protocol
from serving.protocol.send_watch import peer_name, unmapped
from serving.workers import server_sockets
from tests.test_ipv6_hosts import needs_ipv6
from tests.waiting import DEADLINE_S


class _Lines(logging.Handler):
    """The messages of the loggers it is attached to (uvicorn's do not propagate to pytest's caplog)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class _Server(uvicorn.Server):
    """uvicorn's server that says when it serves."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.serving = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.serving.set()


@pytest.fixture(scope="module")
def dual_stack() -> Iterator[tuple[int, _Lines]]:
    """An app answering its client's address, on a ``::`` socket bound as ``--host ::`` binds it (IPv4
    clients too), with the gateway's HTTP protocol; its port and its access and error lines."""
    app = FastAPI()

    @app.get("/client")
    async def client(request: Request) -> dict:
        return {"host": request.client.host if request.client else None}

    sockets = server_sockets("::", 0, reuse_port=False)
    lines = _Lines()
    loggers = [logging.getLogger(name) for name in ("uvicorn.access", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(lines)
    config = uvicorn.Config(app, log_config=None, log_level="info", http=http_protocol(), lifespan="off")
    server = _Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, daemon=True)
    thread.start()
    try:
        assert server.serving.wait(DEADLINE_S), "the server did not start"
        yield sockets[0].getsockname()[1], lines
    finally:
        server.should_exit = True
        thread.join(DEADLINE_S)
        for logger in loggers:
            logger.removeHandler(lines)
        for sock in sockets:
            sock.close()


def _refused(host: str, port: int) -> bytes:
    """The answer to a request with two Host headers, which the gateway's protocol refuses and logs."""
    with socket.create_connection((host, port), timeout=DEADLINE_S) as conn:
        conn.sendall(b"GET /client HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        return conn.recv(64)


def test_an_ipv4_mapped_peer_is_written_as_its_ipv4_address_and_ipv6_in_brackets():
    assert unmapped(("::ffff:10.0.0.5", 80, 0, 0)) == ("10.0.0.5", 80, 0, 0)
    assert unmapped(("::ffff:a00:5", 80)) == ("::ffff:a00:5", 80)  # not written as mapped: left so
    assert peer_name(("::ffff:127.0.0.1", 5555, 0, 0)) == "127.0.0.1:5555"
    assert peer_name(("::1", 5555, 0, 0)) == "[::1]:5555"
    assert peer_name(("10.1.2.3", 80)) == "10.1.2.3:80"


@needs_ipv6
def test_an_ipv4_client_of_the_dual_stack_wildcard_is_its_ipv4_address_in_the_app_and_access_line(dual_stack):
    port, lines = dual_stack
    answer = httpx.get(f"http://127.0.0.1:{port}/client", timeout=DEADLINE_S)
    assert answer.json() == {"host": "127.0.0.1"}
    access = [line for line in lines.lines if "GET /client" in line]
    assert access and access[-1].startswith("127.0.0.1:"), access


@needs_ipv6
def test_a_local_ipv4_proxys_forwarded_for_is_trusted_on_the_dual_stack_wildcard_as_on_ipv4(dual_stack):
    port, _ = dual_stack
    headers = {"X-Forwarded-For": "203.0.113.7"}
    answer = httpx.get(f"http://127.0.0.1:{port}/client", headers=headers, timeout=DEADLINE_S)
    assert answer.json() == {"host": "203.0.113.7"}


@needs_ipv6
def test_a_refused_request_names_an_ipv6_client_in_brackets_and_an_ipv4_one_by_its_address(dual_stack):
    port, lines = dual_stack
    assert _refused("::1", port).startswith(b"HTTP/1.1 400")
    assert _refused("127.0.0.1", port).startswith(b"HTTP/1.1 400")
    refusals = [line for line in lines.lines if line.startswith("refused a request from ")]
    assert any(line.startswith("refused a request from [::1]:") for line in refusals), refusals
    assert any(line.startswith("refused a request from 127.0.0.1:") for line in refusals), refusals
