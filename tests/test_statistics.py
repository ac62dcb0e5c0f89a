"""Triton's statistics extension: tritonclient's get_inference_statistics over HTTP and gRPC reads what the
gateway ran (requests, batches, queue and compute time, per batch size), as perf_analyzer's server side does."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.repo_fixtures import CHANNELS, SIZE, build_classifier_repository
from tests.test_grpc import LoopThread, run_gateway
from tests.waiting import eventually


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    repository = build_classifier_repository(tmp_path_factory.mktemp("stats") / "repo")
    loop = LoopThread()
    try:
        with run_gateway(loop, repository, intra_op_threads=1) as running:
            yield running
    finally:
        loop.close()


def _images(batch: int) -> httpclient.InferInput:
    tensor = httpclient.InferInput("images", [batch, SIZE, SIZE, CHANNELS], "UINT8")
    tensor.set_data_from_numpy(np.zeros((batch, SIZE, SIZE, CHANNELS), np.uint8))
    return tensor


def _lenet(client, items: int | None = None) -> dict:
    """lenet's statistics; with ``items``, once they count that many (a batch is recorded by its
    execution thread just after its answers leave, so a client can read them a moment before)."""
    read = lambda: client.get_inference_statistics("lenet")["model_stats"][0]  # noqa: E731
    if items is not None:
        assert eventually(lambda: read()["inference_count"] >= items)
    return read()


def test_statistics_count_every_request_item_and_batch_the_gateway_ran(gateway):
    with httpclient.InferenceServerClient(gateway.http_url) as client:
        before, started_ms = _lenet(client), time.time() * 1000
        for batch in (1, 1, 3):  # one request at a time: each its own batch
            client.infer("lenet", [_images(batch)])
        after = _lenet(client, before["inference_count"] + 5)
    assert after["name"] == "lenet" and after["version"] == "1"
    assert after["inference_count"] - before["inference_count"] == 5
    assert after["execution_count"] - before["execution_count"] == 3
    assert started_ms - 1000 <= after["last_inference"] <= time.time() * 1000 + 1000
    stats, old = after["inference_stats"], before["inference_stats"]
    for field in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert stats[field]["count"] - old[field]["count"] == 3, field
    assert stats["fail"] == old["fail"]
    assert stats["compute_infer"]["ns"] > old["compute_infer"]["ns"]
    assert (
        stats["success"]["ns"] - old["success"]["ns"]
        >= stats["compute_infer"]["ns"] - old["compute_infer"]["ns"]
    )
    sizes = {s["batch_size"]: s["compute_infer"]["count"] for s in after["batch_stats"]}
    assert sizes.get(3, 0) >= 1 and sum(sizes.values()) == after["execution_count"]
    assert sum(size * count for size, count in sizes.items()) == after["inference_count"]


def test_a_refused_request_counts_as_a_failure_and_runs_nothing(gateway):
    with httpclient.InferenceServerClient(gateway.http_url) as client:
        before = _lenet(client)
        wrong = httpclient.InferInput("images", [1, SIZE, SIZE + 1, CHANNELS], "UINT8")
        wrong.set_data_from_numpy(np.zeros((1, SIZE, SIZE + 1, CHANNELS), np.uint8))
        with pytest.raises(InferenceServerException, match="400"):
            client.infer("lenet", [wrong])
        after = _lenet(client)
    assert after["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"] + 1
    assert after["inference_stats"]["fail"]["ns"] > before["inference_stats"]["fail"]["ns"]
    assert after["execution_count"] == before["execution_count"]
    assert after["inference_stats"]["success"] == before["inference_stats"]["success"]


def test_grpc_answers_the_same_statistics_and_every_model_without_a_name(gateway):
    with httpclient.InferenceServerClient(gateway.http_url) as client:
        before = _lenet(client)
        client.infer("lenet", [_images(2)])
        over_http = _lenet(client, before["inference_count"] + 2)
    with grpcclient.InferenceServerClient(gateway.grpc_url) as client:
        (over_grpc,) = client.get_inference_statistics("lenet", "1", as_json=True)["model_stats"]
        every = client.get_inference_statistics(as_json=True)["model_stats"]
        assert "statistics" in client.get_server_metadata(as_json=True)["extensions"]
    # protobuf's JSON writes uint64 as strings
    assert int(over_grpc["inference_count"]) == over_http["inference_count"]
    assert (
        int(over_grpc["inference_stats"]["queue"]["count"]) == over_http["inference_stats"]["queue"]["count"]
    )
    listed = httpx.get(f"http://{gateway.http_url}/v2/models/stats").json()["model_stats"]
    assert [s["name"] for s in every] == [s["name"] for s in listed] and "lenet" in {s["name"] for s in every}


def test_statistics_of_an_unknown_model_or_version_are_a_404_and_not_found(gateway):
    base = f"http://{gateway.http_url}/v2/models"
    assert httpx.get(f"{base}/nope/stats").status_code == 404
    missing = httpx.get(f"{base}/lenet/versions/7/stats")
    assert missing.status_code == 404 and "version" in missing.json()["error"]
    assert httpx.get(f"{base}/lenet/versions/x/stats").status_code == 400
    with grpcclient.InferenceServerClient(gateway.grpc_url) as client:
        with pytest.raises(InferenceServerException, match="NOT_FOUND"):
            client.get_inference_statistics("nope")
        assert client.is_server_live()  # the refusal left the server serving
