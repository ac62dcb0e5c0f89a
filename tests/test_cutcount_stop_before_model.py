"""A lean request that a stop cuts (its grace ran out) while its body waits for the JSON helper, before
any model took it, is answered 503 and counted 503 once: the 503 was sent, and nothing was counted, as
only a request its model took, or whose client left, was counted."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from serving.app import create_app
from serving.protocol.http1 import http_protocol
from serving.settings import Settings
from tests.repo_fixtures import LiveServer, write_identity_entries
from tests.test_draincut_503 import _Server
from tests.test_metricstruth_lean_client_left import LEAN, _held
from tests.waiting import DEADLINE_S


def test_a_request_cut_in_the_json_helper_is_counted_by_the_503_it_was_answered(tmp_path: Path) -> None:
    if isinstance(http_protocol(), str):
        pytest.skip("httptools is not installed: uvicorn serves with h11 (no lean routes)")
    app = create_app(Settings(model_repository=write_identity_entries(tmp_path, ["ident"]), grpc_port=0))
    entered = threading.Event()
    live = LiveServer(app, server_class=_Server)
    with live, socket.create_connection(("127.0.0.1", live.port), timeout=DEADLINE_S) as conn:
        app.state.json_offload.call = _held(entered)  # parse_infer's wait for the helper, never ending
        conn.sendall(LEAN)
        assert entered.wait(DEADLINE_S)
        live.server.should_exit = True  # as uvicorn's SIGTERM handler does: the grace (0.2 s) runs out
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    metrics = app.state.metrics
    assert metrics.sample("kiln_request_failures_total", model="ident", status="503") == 1.0
    assert metrics.sample("kiln_request_failures_total", model="ident", status="499") is None
    assert metrics.sample("kiln_requests_total", model="ident", outcome="failure") == 1.0
