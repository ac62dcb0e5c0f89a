"""A client that leaves a lean route (KServe v2 infer, translate with a Content-Length) before its answer
is counted once, 499, as the other routes count it. One that left while its body waited for the JSON
helper (parsed off the event loop, behind other bodies) was cancelled before any model ran, and counted
nowhere: a gateway whose clients all timed out in that wait read as idle. One that left while its large
answer was written there was counted a success already, and stays that alone (not a 499 on top)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serving.app import create_app
from serving.protocol.http1 import http_protocol
from serving.settings import Settings
from tests.repo_fixtures import LiveServer, write_identity_entries
from tests.waiting import DEADLINE_S, eventually

BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}).encode()
LEAN = b"POST /v2/models/ident/infer HTTP/1.1\r\nhost: kiln\r\ncontent-length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Any, LiveServer]]:
    if isinstance(http_protocol(), str):
        pytest.skip("httptools is not installed: uvicorn serves with h11 (no lean routes)")
    app = create_app(Settings(model_repository=write_identity_entries(tmp_path, ["ident"]), grpc_port=0))
    with LiveServer(app) as server:
        yield app, server


def _held(entered: threading.Event) -> Any:
    """A JSON helper's step that never ends (a body waiting its turn there): ``entered`` once begun."""

    async def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await asyncio.Event().wait()

    return held


def _send_and_leave(port: int, entered: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as conn:
        conn.sendall(LEAN)
        assert entered.wait(DEADLINE_S)


def _wait_cancelled(server: LiveServer) -> None:
    """Until the lean answer's task, cancelled as its client left, has ended (counted by then)."""
    tasks = server.server.server_state.tasks
    assert eventually(lambda: not tasks)


def _counts(metrics: Any) -> dict[str, Any]:
    return {
        "success": metrics.sample("kiln_requests_total", model="ident", outcome="success"),
        "failure": metrics.sample("kiln_requests_total", model="ident", outcome="failure"),
        "499": metrics.sample("kiln_request_failures_total", model="ident", status="499"),
    }


def test_a_client_that_leaves_while_its_body_waits_for_the_json_helper_counts_one_499(gateway):
    app, server = gateway
    entered = threading.Event()
    app.state.json_offload.call = _held(entered)  # parse_infer's wait for the helper
    _send_and_leave(server.port, entered)
    _wait_cancelled(server)
    assert _counts(app.state.metrics) == {"success": None, "failure": 1.0, "499": 1.0}


def test_a_client_that_leaves_while_its_answer_is_encoded_stays_one_success(gateway):
    app, server = gateway
    entered = threading.Event()
    app.state.json_offload.encode_infer = _held(entered)  # after the model answered (counted)
    _send_and_leave(server.port, entered)
    _wait_cancelled(server)
    assert _counts(app.state.metrics) == {"success": 1.0, "failure": None, "499": None}
