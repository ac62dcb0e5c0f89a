"""Inference requests whose body never arrives whole, in the request series as they were answered:
499 when the client leaves mid-body, 408 when the body pauses past the read timeout (the protocol's
answer), on every inference route, whether the gateway's HTTP protocol gathers the body itself (a lean
route with a Content-Length) or the app reads it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from serving.app import create_app
from serving.protocol.http1 import http_protocol
from serving.settings import Settings
from tests.repo_fixtures import LiveServer, build_classifier_repository
from tests.waiting import DEADLINE_S, eventually

# every inference route: the lean ones (translate, v2 infer), read by the protocol where the body has
# a Content-Length, and the routed ones; each for the repository's one model
ROUTES = (
    "/v2/models/lenet/infer",
    "/v2/models/lenet/versions/1/infer",
    "/v1/models/lenet/translate",
    "/v1/models/lenet/classify",
    "/v2/models/lenet/generate",
)
FRAMINGS = {
    "content-length": (b"content-length: 1000\r\n", b"{"),
    "chunked": (b"transfer-encoding: chunked\r\n", b"1\r\n{\r\n"),
}


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return build_classifier_repository(tmp_path_factory.mktemp("cut") / "repo")


def _begun(port: int, path: str, framing: str) -> socket.socket:
    """A connection that sent ``path``'s head and the first byte of a body it never finishes."""
    header, first = FRAMINGS[framing]
    conn = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)
    conn.sendall(b"POST %s HTTP/1.1\r\nhost: kiln\r\n%s\r\n%s" % (path.encode(), header, first))
    return conn


def _failures(metrics, status: str) -> float:
    return metrics.sample("kiln_request_failures_total", model="lenet", status=status) or 0.0


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
def test_a_body_its_client_cut_short_counts_once_as_499_on_every_inference_route(repository, framing):
    """A Content-Length body cut on translate or v2 infer was counted nowhere (the protocol gathers
    it, and the app never saw the request), where classify and generate counted it as 499."""
    app = create_app(Settings(model_repository=repository, grpc_port=0))
    metrics = app.state.metrics
    with LiveServer(app) as server:
        for count, path in enumerate(ROUTES, 1):
            _begun(server.port, path, framing).close()
            assert eventually(lambda c=count: _failures(metrics, "499") == c), path
    assert metrics.sample("kiln_requests_total", model="lenet", outcome="failure") == len(ROUTES)
    assert _failures(metrics, "408") == 0


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
def test_a_body_ended_by_the_read_timeout_counts_as_the_408_it_was_answered(repository, framing):
    """The protocol answers 408 to a body paused past the read timeout; the app, seeing its client
    gone, counted it as 499 (and a lean route with a Content-Length not at all)."""
    app = create_app(Settings(model_repository=repository, grpc_port=0))
    metrics = app.state.metrics
    with LiveServer(app, http=http_protocol(read_timeout_s=0.2)) as server:
        for count, path in enumerate(ROUTES, 1):
            with _begun(server.port, path, framing) as conn:
                assert conn.recv(64).startswith(b"HTTP/1.1 408 "), path
            assert eventually(lambda c=count: _failures(metrics, "408") == c), path
    assert metrics.sample("kiln_requests_total", model="lenet", outcome="failure") == len(ROUTES)
    assert _failures(metrics, "499") == 0
