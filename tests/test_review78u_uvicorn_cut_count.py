"""A request that a stop cuts (its grace ran out) while its body waits for the JSON helper, before any
model took it, is answered 503 and counted 503 once, whether the lean layer answers it (a Content-Length
body: ``_count_left``) or uvicorn's cycle (a chunked body). Both were counted nowhere: only a request its
model took, or whose client left, was counted; uvicorn does not cancel a request whose client left, so
on its cycle the stop's is the only cut."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from serving.app import create_app
from serving.settings import Settings
from tests.repo_fixtures import LiveServer, write_identity_entries
from tests.test_draincut_503 import _Server
from tests.test_metricstruth_lean_client_left import BODY, LEAN, _held
from tests.waiting import DEADLINE_S

TRANSLATE = json.dumps({"texts": ["hello"]}).encode()


def _chunked(path: bytes, body: bytes) -> bytes:
    head = b"POST %s HTTP/1.1\r\nhost: kiln\r\ntransfer-encoding: chunked\r\n\r\n" % path
    return head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


@pytest.mark.parametrize(
    "request_bytes",
    [LEAN, _chunked(b"/v2/models/ident/infer", BODY), _chunked(b"/v1/models/ident/translate", TRANSLATE)],
    ids=["v2-infer-lean", "v2-infer-chunked", "translate-chunked"],
)
def test_a_chunked_request_cut_in_the_json_helper_is_counted_by_its_503(
    tmp_path: Path, request_bytes: bytes
) -> None:
    app = create_app(Settings(model_repository=write_identity_entries(tmp_path, ["ident"]), grpc_port=0))
    entered = threading.Event()
    live = LiveServer(app, server_class=_Server)
    with live, socket.create_connection(("127.0.0.1", live.port), timeout=DEADLINE_S) as conn:
        app.state.json_offload.call = _held(entered)  # the body's wait for the JSON helper, never ending
        conn.sendall(request_bytes)
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
