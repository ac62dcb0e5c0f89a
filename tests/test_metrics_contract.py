"""/metrics as DESIGN.md promises it: request counts per model (failures by status), latency histograms
that resolve what they measure, an in-flight gauge back at zero whatever ended a request, and series
only for the repository's models whatever a client names."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.metrics import GatewayMetrics
from serving.settings import Settings
from tests.repo_fixtures import SIZE, build_classifier_repository


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return build_classifier_repository(tmp_path_factory.mktemp("metrics") / "repo")


def _body(shape: tuple[int, ...] = (1, SIZE, SIZE, 1), request_id: str = "") -> bytes:
    count = 1
    for size in shape:
        count *= size
    tensor = {"name": "images", "datatype": "UINT8", "shape": list(shape), "data": [1] * count}
    return json.dumps({"id": request_id, "inputs": [tensor]}).encode()


def test_latency_histograms_resolve_sub_millisecond_runs_and_multi_second_translations():
    metrics = GatewayMetrics()
    metrics.observe_batch("lenet", 1, 0.00004)  # 40 us and 200 us: a small classifier's batches
    metrics.observe_batch("lenet", 1, 0.0002)
    metrics.observe_translation("gru", 8.0, 10, "success")
    metrics.observe_translation("gru", 20.0, 10, "success")
    compute = "kiln_compute_latency_seconds_bucket"
    assert metrics.sample(compute, model="lenet", le="0.0001") == 1
    assert metrics.sample(compute, model="lenet", le="0.00025") == 2
    translate = "kiln_translate_latency_seconds_bucket"
    assert metrics.sample(translate, model="gru", outcome="success", le="10.0") == 1
    assert metrics.sample(translate, model="gru", outcome="success", le="30.0") == 2


def _series(page: str) -> set[str]:
    """Every series of a /metrics page, by name and labels (values left out)."""
    return {line.rsplit(" ", 1)[0] for line in page.splitlines() if line and not line.startswith("#")}


def test_unknown_models_and_versions_a_client_names_add_no_series(repository):
    with TestClient(create_app(Settings(model_repository=repository, grpc_port=0))) as client:
        assert client.post("/v2/models/lenet/infer", content=_body()).status_code == 200
        before = _series(client.get("/metrics").text)
        for _ in range(3):
            name, version = f"m-{uuid.uuid4().hex}", str(uuid.uuid4().int)
            for path in (
                f"/v2/models/{name}/infer",
                f"/v2/models/lenet/versions/{version}/infer",
                f"/v2/models/lenet/versions/x{version}/infer",
                f"/v1/models/{name}/classify",
                f"/v1/models/{name}/translate",
            ):
                assert client.post(path, content=_body()).status_code in (400, 404), path
            assert client.get(f"/v2/models/{name}/versions/{version}/ready").status_code in (400, 404)
        assert _series(client.get("/metrics").text) == before
