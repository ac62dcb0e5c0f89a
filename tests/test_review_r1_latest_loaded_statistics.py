"""A model whose version policy serves two versions, the newest of which fails its load: calls without
a version are answered by the version before it (as Triton answers "latest"), so their statistics are
that version's too. They were counted under the broken version (its success and latency there, its
queue and compute under the one that ran it), and the model's statistics were a 404, left out of the
every-model list, while it answered every call."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings
from tests.test_repo_g_versions import _repository
from tests.waiting import eventually

BODY = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}


def _client(root: Path) -> TestClient:
    settings = Settings(model_repository=_repository(root), grpc_port=0, lone_request_threads=0)
    return TestClient(create_app(settings))


def test_a_call_without_a_version_is_counted_under_the_version_that_answered_it(tmp_path):
    with _client(tmp_path) as client:
        answer = client.post("/v2/models/double/infer", json=BODY)
        metrics = client.get("/metrics").text
    assert answer.status_code == 200 and answer.json()["model_version"] == "1"
    assert 'kiln_requests_total{model="double",outcome="success",version="1"} 1.0' in metrics
    assert 'version="3"' not in metrics


def test_the_statistics_of_the_versions_that_loaded_are_served(tmp_path):
    with _client(tmp_path) as client:
        assert client.post("/v2/models/double/infer", json=BODY).status_code == 200
        # its batch is recorded by the execution thread just after the answer leaves: wait for it
        metrics = client.app.state.metrics
        assert eventually(lambda: metrics.sample("kiln_batch_runs_total", model="double") == 1)
        model = client.get("/v2/models/double/stats")
        every = client.get("/v2/models/stats")
        broken = client.get("/v2/models/double/versions/3/stats")
    assert model.status_code == 200, model.text
    (stat,) = model.json()["model_stats"]
    assert stat["version"] == "1" and stat["execution_count"] == 1
    assert stat["inference_stats"]["success"]["count"] == 1
    assert [(s["name"], s["version"]) for s in every.json()["model_stats"]] == [("double", "1")]
    assert broken.status_code == 404 and "failed to load" in broken.json()["error"]
