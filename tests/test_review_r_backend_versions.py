"""The version label of the statistics' series is the version the backend serves, not the gateway
repository's: a backend that lists its own models (Triton's index) served requests whose success the
statistics never showed when the gateway's repository held other versions, or not the model at all."""

from __future__ import annotations

from pathlib import Path

import httpx

from serving.app import create_app
from serving.settings import Settings
from tests.repo_fixtures import LiveServer
from tests.test_grpc import FakeBackend


def test_a_backends_own_models_count_their_requests_in_the_version_it_serves(tmp_path: Path) -> None:
    """As through ``--backend triton`` with a gateway repository that lacks the model: the answers
    and Triton's batching are version 1's, so its success must be too (it was labelled "" and lost)."""
    empty = tmp_path / "repository"
    empty.mkdir()
    app = create_app(Settings(model_repository=empty, grpc_port=0), backend=FakeBackend())
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}
    with LiveServer(app) as server:
        base = f"http://{server.url}/v2/models/double"
        for _ in range(3):
            assert httpx.post(f"{base}/infer", json=body).status_code == 200
        assert httpx.post(f"{base}/versions/1/infer", json=body).status_code == 200
        (stat,) = httpx.get(f"{base}/stats").json()["model_stats"]
    assert stat["version"] == "1" and stat["inference_stats"]["success"]["count"] == 4
    assert app.state.metrics.sample("kiln_requests_total", model="double", version="") is None


def test_a_version_named_while_the_backend_cannot_list_its_models_mints_no_series() -> None:
    """Triton unreachable (or its model list not fetched yet): the version a client named labelled
    its failure, one new series per made-up version."""
    from serving.errors import Unavailable
    from serving.metrics import GatewayMetrics

    class Unreachable:
        def metadata(self, name: str, version: str = ""):
            raise Unavailable("triton is down")

    metrics = GatewayMetrics()
    metrics.repository = Unreachable()
    for version in ("7", "123456789"):
        metrics.refused("double", Unavailable("triton is down"), 503, version)
    assert metrics.sample("kiln_requests_total", model="double", version="") == 2
    assert metrics.sample("kiln_requests_total", model="double", version="7") is None
