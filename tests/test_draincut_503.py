"""A request still in flight when a stop cuts it (the drain's grace ran out, or a second Ctrl-C) and
whose answer has not begun is answered as a stopping gateway answers (README, "Errors"): 503 JSON
``{"error": ...}`` with ``Retry-After`` and ``connection: close``, which clients and load balancers
retry elsewhere. uvicorn's cycle answered it a plain-text ``500 Internal Server Error`` (a failed
request, not one to retry), and a lean route's (v2 infer, translate with a Content-Length) closed the
connection without an answer."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from serving.app import GatewayServer, create_app
from serving.protocol.http1 import http_protocol
from serving.settings import Settings
from tests.repo_fixtures import LiveServer
from tests.test_grpc import FakeBackend

GRACE_S = 0.2
RETRY_AFTER_S = 3
BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
).encode()
# a Content-Length: answered by the protocol's lean route; chunked: by uvicorn's ASGI cycle
LEAN = b"POST /v2/models/hang/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
ASGI = (
    b"POST /v2/models/hang/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
)


class _Gated(FakeBackend):
    """``hang`` never answers; ``entered`` counts the requests that reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Semaphore(0)

    async def infer(self, request: Any) -> Any:
        if request.model == "hang":
            self.entered.release()
            await asyncio.Event().wait()
        return await super().infer(request)


class _Server(GatewayServer):
    def __init__(self, config: Any) -> None:
        config.timeout_graceful_shutdown = GRACE_S  # python -m serving's --shutdown-grace-s
        super().__init__(config)


def _answers_of_cut_requests(tmp_path: Path, stop: Any) -> tuple[list[bytes], _Server]:
    """Both kinds of request sent and held by the model, then ``stop(server)``; what each client read
    before the server's end of the stream."""
    if isinstance(http_protocol(), str):
        pytest.skip("httptools is not installed: uvicorn serves with h11")
    backend = _Gated()
    settings = Settings(model_repository=tmp_path, grpc_port=0, retry_after_s=RETRY_AFTER_S)
    live = LiveServer(create_app(settings, backend=backend), server_class=_Server)
    with live:
        socks = [socket.create_connection(("127.0.0.1", live.port)) for _ in (LEAN, ASGI)]
        try:
            for sock, request in zip(socks, (LEAN, ASGI), strict=True):
                sock.settimeout(10)  # a failure bound
                sock.sendall(request)
            for _ in socks:
                assert backend.entered.acquire(timeout=10)  # a failure bound
            stop(live.server)
            answers = []
            for sock in socks:
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
                answers.append(answer)
        finally:
            for sock in socks:
                sock.close()
    return answers, live.server


def _check_503(answers: list[bytes], why: str) -> None:
    for answer, kind in zip(answers, ("lean route", "ASGI cycle"), strict=True):
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 "), (kind, answer)
        lines = head.lower().split(b"\r\n")
        assert b"retry-after: %d" % RETRY_AFTER_S in lines, (kind, answer)
        assert b"connection: close" in lines and b"content-type: application/json" in lines, (kind, answer)
        error = json.loads(body)["error"]
        assert error.startswith("the gateway is shutting down: ") and why in error, (kind, error)


def test_requests_the_drains_grace_cuts_are_answered_503_to_retry(tmp_path: Path) -> None:
    def sigterm(server: Any) -> None:
        server.should_exit = True  # as uvicorn's SIGTERM handler does

    answers, server = _answers_of_cut_requests(tmp_path, sigterm)
    _check_503(answers, f"its shutdown grace ({GRACE_S:g} s) ran out")
    assert server.cut_requests == 2 and server.exit_status == 1  # still a cut stop (exit 1)


def test_requests_a_second_ctrl_c_cuts_are_answered_503_to_retry(tmp_path: Path) -> None:
    def two_ctrl_cs(server: Any) -> None:
        server.handle_exit(signal.SIGINT, None)
        server.handle_exit(signal.SIGINT, None)

    answers, server = _answers_of_cut_requests(tmp_path, two_ctrl_cs)
    _check_503(answers, "a second Ctrl-C cut this request")
    assert server.exit_status == 1
