"""An inference request whose chunked body the HTTP/1 protocol refuses as it arrives (a malformed
chunk size: 400, the connection closed) counts once as the 400 it was answered, not as 499: its client
did not leave, the app only saw its body end (as a body the read timeout ends counts as its 408)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from serving.app import create_app
from serving.settings import Settings
from tests.repo_fixtures import LiveServer, build_classifier_repository
from tests.waiting import DEADLINE_S, eventually

# the routed ones and the lean ones (a chunked body: the app reads it, not the protocol)
ROUTES = (
    "/v1/models/lenet/classify",
    "/v2/models/lenet/generate",
    "/v2/models/lenet/infer",
    "/v1/models/lenet/translate",
)


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return build_classifier_repository(tmp_path_factory.mktemp("chunks") / "repo")


def _failures(metrics, status: str) -> float:
    return metrics.sample("kiln_request_failures_total", model="lenet", status=status) or 0.0


def test_a_chunked_body_the_protocol_refuses_counts_as_its_400_not_499(repository) -> None:
    app = create_app(Settings(model_repository=repository, grpc_port=0))
    metrics = app.state.metrics
    with LiveServer(app) as server:
        for count, path in enumerate(ROUTES, 1):
            head = b"POST %s HTTP/1.1\r\nhost: kiln\r\ntransfer-encoding: chunked\r\n\r\n" % path.encode()
            with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_S) as conn:
                conn.sendall(head + b"1\r\n{\r\nzz\r\n")  # "zz": not a chunk size
                assert conn.recv(64).startswith(b"HTTP/1.1 400 "), path
            assert eventually(lambda c=count: _failures(metrics, "400") == c), path
    assert _failures(metrics, "499") == 0
    assert metrics.sample("kiln_requests_total", model="lenet", outcome="failure") == len(ROUTES)
