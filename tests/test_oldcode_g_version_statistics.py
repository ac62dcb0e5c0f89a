"""Statistics per model version, as Triton keeps them: a model served in versions 1 and 2 lists each
with its own figures (the one without traffic at zeros), over HTTP and gRPC; the series they are read
from carry the version that served, and a version no model serves adds no series."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from serving.errors import BadRequest
from serving.execution.repository import Repository
from serving.metrics import GatewayMetrics
from tests.repo_fixtures import CHANNELS, SIZE, build_classifier_repository
from tests.test_grpc import Gateway, run_gateway
from tests.waiting import eventually


def _two_versions(root: Path) -> Path:
    """lenet served in versions 1 and 2 (``version_policy { all {} }``)."""
    repository = build_classifier_repository(root)
    shutil.copytree(repository / "lenet" / "1", repository / "lenet" / "2")
    config = repository / "lenet" / "config.pbtxt"
    text = re.sub(r"version_policy\s*\{[^{}]*\{[^{}]*\}[^{}]*\}", "", config.read_text())
    config.write_text(text + "\nversion_policy { all {} }\n")
    return repository


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _two_versions(tmp_path_factory.mktemp("versions") / "repo")


@pytest.fixture(scope="module")
def gateway(repository: Path, loop) -> Iterator[Gateway]:
    with run_gateway(loop, repository, intra_op_threads=1, max_body_bytes=4096) as running:
        yield running


def _images(module, batch: int):
    tensor = module.InferInput("images", [batch, SIZE, SIZE, CHANNELS], "UINT8")
    tensor.set_data_from_numpy(np.zeros((batch, SIZE, SIZE, CHANNELS), np.uint8))
    return tensor


def _http_stats(gateway: Gateway, path: str = "") -> list[dict]:
    reply = httpx.get(f"http://{gateway.http_url}/v2/models{path}/stats")
    assert reply.status_code == 200, reply.text
    return reply.json()["model_stats"]


def _by_version(stats: list[dict]) -> dict[str, dict]:
    return {stat["version"]: stat for stat in stats if stat["name"] == "lenet"}


def _figures(stat: dict) -> tuple[int, ...]:
    inference = stat["inference_stats"]
    return (
        int(inference["success"].get("count", 0)),
        int(inference["queue"].get("count", 0)),
        int(stat.get("inference_count", 0)),
        int(stat.get("execution_count", 0)),
    )


def test_each_version_keeps_its_own_statistics_over_http_and_grpc(gateway: Gateway) -> None:
    assert sorted(_by_version(_http_stats(gateway, "/lenet"))) == ["1", "2"]  # both listed before any traffic
    with httpclient.InferenceServerClient(gateway.http_url) as client:
        client.infer("lenet", [_images(httpclient, 1)], model_version="1")
        client.infer("lenet", [_images(httpclient, 2)], model_version="1")
    with grpcclient.InferenceServerClient(gateway.grpc_url) as client:
        client.infer("lenet", [_images(grpcclient, 1)], model_version="1")
    # the batches are observed after their answers leave: 4 items in 3 runs, all version 1's
    assert eventually(lambda: _figures(_by_version(_http_stats(gateway, "/lenet"))["1"]) == (3, 3, 4, 3))
    every = _by_version(_http_stats(gateway))
    one = _by_version(_http_stats(gateway, "/lenet"))
    assert _figures(every["1"]) == _figures(one["1"]) == (3, 3, 4, 3)
    assert _figures(every["2"]) == _figures(one["2"]) == (0, 0, 0, 0) and one["2"]["batch_stats"] == []
    assert one["2"]["last_inference"] == 0 < one["1"]["last_inference"]
    assert [s["batch_size"] for s in one["1"]["batch_stats"]] == [1, 2]
    assert list(_by_version(_http_stats(gateway, "/lenet/versions/2"))) == ["2"]
    assert _figures(_by_version(_http_stats(gateway, "/lenet/versions/1"))["1"]) == (3, 3, 4, 3)
    with grpcclient.InferenceServerClient(gateway.grpc_url) as client:
        grpc_all = _by_version(client.get_inference_statistics("lenet", as_json=True)["model_stats"])
        grpc_one = client.get_inference_statistics("lenet", "2", as_json=True)["model_stats"]
    assert _figures(grpc_all["1"]) == (3, 3, 4, 3) and _figures(grpc_all["2"]) == (0, 0, 0, 0)
    assert [s["version"] for s in grpc_one] == ["2"] and _figures(grpc_one[0]) == (0, 0, 0, 0)
    # a request naming no version is served, and counted, by the latest
    with httpclient.InferenceServerClient(gateway.http_url) as client:
        client.infer("lenet", [_images(httpclient, 1)])
    assert eventually(lambda: _figures(_by_version(_http_stats(gateway, "/lenet"))["2"]) == (1, 1, 1, 1))
    assert _figures(_by_version(_http_stats(gateway, "/lenet"))["1"]) == (3, 3, 4, 3)


def test_an_unknown_version_mints_no_series(gateway: Gateway) -> None:
    base = f"http://{gateway.http_url}/v2/models/lenet/versions/7"
    assert httpx.post(f"{base}/infer", content=b"{}").status_code == 404
    assert httpx.post(f"{base}/infer", content=b"x" * 8192).status_code == 413  # refused before its route
    with (
        grpcclient.InferenceServerClient(gateway.grpc_url) as client,
        pytest.raises(Exception, match="no version '7'"),
    ):
        client.infer("lenet", [_images(grpcclient, 1)], model_version="7")
    scrape = httpx.get(f"http://{gateway.http_url}/metrics").text
    versions = set(re.findall(r'version="([^"]*)"', scrape))
    assert versions <= {"1", "2"} and "2" in versions


def test_a_refusal_in_an_unknown_version_is_the_default_versions_and_is_not_kept(tmp_path: Path) -> None:
    metrics = GatewayMetrics()
    metrics.repository = Repository(_two_versions(tmp_path / "repo"))
    for version in ("7", "8", "1", ""):
        metrics.refused("lenet", BadRequest("no"), 400, version)
    assert metrics.sample("kiln_requests_total", model="lenet", version="2", outcome="failure") == 3
    assert metrics.sample("kiln_requests_total", model="lenet", version="1", outcome="failure") == 1
    assert b'version="7"' not in metrics.render() and b'version="8"' not in metrics.render()
    asked = {key[2] for key in metrics._versioned}
    assert asked == {"1", ""}  # made-up versions are not remembered either: the table stays bounded
