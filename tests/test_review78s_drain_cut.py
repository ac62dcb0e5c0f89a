"""Review of the stop's 503 for the requests it cuts (tests/test_draincut_503.py): a request with
others pipelined behind it is the one answered 503 (the connection's ``cycle`` is the last request
parsed, the one queued behind it: the cut one was answered uvicorn's 500, or, on a lean route, its
connection closed without an answer), and a cut request is counted in ``kiln_request_failures_total``
by the 503 its client got, not as 499 (a client gone)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from serving.app import create_app
from serving.protocol.http1 import http_protocol
from serving.settings import Settings
from tests.repo_fixtures import LiveServer
from tests.test_draincut_503 import ASGI, LEAN, RETRY_AFTER_S, _Gated, _Server

GET = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"


def _cut(tmp_path: Path, requests: bytes) -> tuple[bytes, Any]:
    """``requests`` sent on one connection, the first held by the model, then a stop whose grace runs
    out; what the client read before the server's end of the stream, and the app's metrics."""
    if isinstance(http_protocol(), str):
        pytest.skip("httptools is not installed: uvicorn serves with h11, which parses no request ahead")
    backend = _Gated()
    settings = Settings(model_repository=tmp_path, grpc_port=0, retry_after_s=RETRY_AFTER_S)
    app = create_app(settings, backend=backend)
    live = LiveServer(app, server_class=_Server)
    with live, socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.settimeout(10)  # a failure bound
        sock.sendall(requests)
        assert backend.entered.acquire(timeout=10)  # a failure bound
        live.server.should_exit = True  # as uvicorn's SIGTERM handler does
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer, app.state.metrics


@pytest.mark.parametrize("first", [LEAN, ASGI], ids=["lean route", "ASGI cycle"])
@pytest.mark.parametrize("answered_before", [False, True], ids=["first", "after an answer"])
def test_a_cut_request_with_requests_pipelined_behind_it_is_answered_503(
    tmp_path: Path, first: bytes, answered_before: bool
) -> None:
    answer, _ = _cut(tmp_path, (GET if answered_before else b"") + first + GET)
    if answered_before:  # the request before it answered 200, the cut one begun after it (uvicorn's cycle)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        answer = answer[answer.index(b"HTTP/1.1 ", 1) :]
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), answer
    lines = head.lower().split(b"\r\n")
    assert b"retry-after: %d" % RETRY_AFTER_S in lines and b"connection: close" in lines, answer
    assert json.loads(body)["error"].startswith("the gateway is shutting down: "), answer


@pytest.mark.parametrize("request_", [LEAN, ASGI], ids=["lean route", "ASGI cycle"])
def test_a_cut_request_is_counted_by_the_503_its_client_got(tmp_path: Path, request_: bytes) -> None:
    answer, metrics = _cut(tmp_path, request_)
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    assert metrics.sample("kiln_request_failures_total", model="hang", status="503") == 1
    assert not metrics.sample("kiln_request_failures_total", model="hang", status="499")


@pytest.mark.parametrize("server", ["kiln", "grpcio"])
def test_a_grpc_call_the_stops_grace_cuts_is_counted_by_the_unavailable_it_ends_with(
    loop: Any, server: str
) -> None:
    import grpc
    import numpy as np
    from tritonclient.grpc import service_pb2_grpc

    from serving.metrics import GatewayMetrics
    from serving.protocol.grpc_server import start_grpc_server
    from tests.h2_client import doubling_request
    from tests.test_grpc import FakeBackend
    from tests.waiting import eventually

    backend, metrics = FakeBackend(), GatewayMetrics()
    handle = loop.run(start_grpc_server(backend, "127.0.0.1", 0, server=server, metrics=metrics))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            answer = stub.ModelInfer.future(doubling_request(np.ones((1, 3), np.float32), "hang"), timeout=60)
            assert eventually(lambda: backend.last_request is not None)  # "hang" never answers
            loop.run(handle.stop(0.2))
            with pytest.raises(grpc.RpcError) as raised:
                answer.result(timeout=30)
    finally:
        loop.run(handle.stop(0.2))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE

    def counted() -> dict[str, Any]:
        statuses = ("499", "503")
        return {s: metrics.sample("kiln_request_failures_total", model="hang", status=s) for s in statuses}

    assert eventually(lambda: any(counted().values()))  # counted as the server cancels the call
    assert counted() == {"499": None, "503": 1}
