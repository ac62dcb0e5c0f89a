"""What an operator or a perf_analyzer user reads back from the gateway: the statistics extension with a
broken repository entry beside the good ones, the versions it labels its figures with, and the OpenAPI
document of the infer body and the health probes against what the gateway really takes and answers."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import jsonschema
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from serving.app import create_app
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.repository import Repository
from serving.metrics import GatewayMetrics
from serving.protocol.statistics import model_statistics
from serving.protocol.v2_codec import MAX_TIMEOUT_US
from serving.settings import Settings
from tests.repo_fixtures import write_onnx_entry

CONFIG = """name: "double"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{ name: "x" data_type: TYPE_FP32 dims: [ 3 ] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [ 3 ] }]
dynamic_batching { }
"""


def _write_double(root: Path) -> Path:
    """``double`` (y = 2x, version 1) in ``root``."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [two],
    )
    return write_onnx_entry(root, graph, CONFIG)


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return _write_double(tmp_path_factory.mktemp("observability"))


@pytest.fixture(scope="module")
def with_broken_entry(tmp_path_factory) -> Path:
    """``double`` and ``broken``, an entry whose config.pbtxt does not parse (the gateway starts,
    serves ``double`` and reports ``broken`` unavailable in its repository index)."""
    root = _write_double(tmp_path_factory.mktemp("observability-broken"))
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "config.pbtxt").write_text("this is { not a config")
    return root


def _infer_body(**parameters: object) -> dict:
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}
    return {"parameters": parameters, "inputs": [tensor]}


def test_statistics_of_every_model_leave_out_an_entry_that_failed_to_load_and_answer_the_others(
    with_broken_entry,
):
    """One repository entry that failed to load made ``GET /v2/models/stats`` (and gRPC
    ModelStatistics without a name, tritonclient's ``get_inference_statistics()``) a 404 naming it:
    no statistics for any model. Triton lists the models it loaded; so does the gateway now."""
    settings = Settings(model_repository=with_broken_entry, grpc_port=0)
    with TestClient(create_app(settings)) as client:
        assert client.post("/v2/models/double/infer", json=_infer_body()).status_code == 200
        every = client.get("/v2/models/stats")
        assert every.status_code == 200, every.text
        (stat,) = every.json()["model_stats"]
        assert (stat["name"], stat["version"]) == ("double", "1")
        assert stat["inference_stats"]["success"]["count"] == 1
        assert client.get("/v2/models/broken/stats").status_code == 404  # asked by name: still a 404


def test_the_model_list_shows_an_entry_that_failed_to_load_as_not_ready_and_the_others_as_served(
    with_broken_entry,
):
    """``GET /v1/models`` answered 404 naming the broken entry: no list at all."""
    settings = Settings(model_repository=with_broken_entry, grpc_port=0)
    with TestClient(create_app(settings)) as client:
        listed = client.get("/v1/models")
        assert listed.status_code == 200, listed.text
        assert {m["name"]: m["ready"] for m in listed.json()} == {"broken": False, "double": True}


def test_a_model_directory_whose_name_is_not_utf8_is_listed_with_its_bytes_escaped(tmp_path):
    """A directory named by bytes that are not UTF-8 (Python keeps them as lone surrogates) failed
    every ``GET /v1/models`` and repository index with a 500 (neither JSON nor protobuf carries a
    surrogate). It is a failed entry under its escaped name, saying why."""
    root = _write_double(tmp_path / "repo")
    odd = root / os.fsdecode(b"caf\xe9")
    (odd / "1").mkdir(parents=True)
    (odd / "config.pbtxt").write_text('platform: "onnxruntime_onnx"')
    settings = Settings(model_repository=root, grpc_port=0)
    with TestClient(create_app(settings)) as client:
        listed = client.get("/v1/models")
        assert listed.status_code == 200, listed.text
        assert {m["name"]: m["ready"] for m in listed.json()} == {"caf\\xe9": False, "double": True}
        index = client.post("/v2/repository/index")
        assert index.status_code == 200, index.text
        (odd_entry,) = [e for e in index.json() if e["name"] == "caf\\xe9"]
        assert odd_entry["state"] == "UNAVAILABLE" and "not valid UTF-8" in odd_entry["reason"]
        assert client.get("/v2/models/double").status_code == 200


def test_statistics_of_every_model_label_each_with_the_version_it_serves_whatever_version_is_asked(
    repository,
):
    """gRPC ModelStatistics may carry a version without a name: every model was then labelled with
    that version, one it may not have (``double`` has only version 1). Triton ignores the version
    when no model is named and reports each in the version it serves; so does the gateway now."""
    backend = OnnxRuntimeBackend(Repository(repository))
    stats = asyncio.run(model_statistics(backend, GatewayMetrics(), "", "7"))
    assert [(stat["name"], stat["version"]) for stat in stats] == [("double", "1")]


def test_the_published_infer_schema_takes_every_timeout_the_gateway_takes_and_none_it_refuses(repository):
    """The KServe ``timeout`` parameter is 0 (none, Triton's default) up to an int64 of microseconds;
    the document said at least 1 (a client validating against it refused 0, which the gateway
    serves) and set no ceiling (2**63, which the gateway refuses with a 400, validated)."""
    app = create_app(Settings(model_repository=repository, grpc_port=0))
    operation = app.openapi()["paths"]["/v2/models/{name}/infer"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    with TestClient(app) as client:
        for timeout, status in ((0, 200), (1, 200), (MAX_TIMEOUT_US, 200), (MAX_TIMEOUT_US + 1, 400)):
            body = _infer_body(timeout=timeout)
            assert client.post("/v2/models/double/infer", json=body).status_code == status, timeout
            if status == 200:
                jsonschema.validate(body, schema)
            else:
                with pytest.raises(jsonschema.ValidationError):
                    jsonschema.validate(body, schema)


def test_the_health_probes_document_their_400_as_not_live_or_not_ready_not_as_malformed_input():
    """A probe's 400 means the server is not live or not ready; the document described it as the
    inference routes' 400 (malformed input, an undecodable image, a model of the other task)."""
    paths = create_app(Settings(grpc_port=0)).openapi()["paths"]
    for probe, state in (("/v2/health/live", "live"), ("/v2/health/ready", "ready")):
        refused = paths[probe]["get"]["responses"]["400"]
        assert refused["description"] == f"the server is not {state}", probe
        assert refused["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


def test_a_generate_request_refused_before_its_model_runs_is_counted_for_the_model_once(repository) -> None:
    """Generate's 400s (a body that is not JSON) and 413s (past the body limit) reached no request
    series: its paths were missing from the routes a refusal is counted on."""
    settings = Settings(model_repository=repository, grpc_port=0, max_body_bytes=4096)
    app = create_app(settings)
    with TestClient(app) as client:
        assert client.post("/v2/models/double/generate", content=b"{").status_code == 400
        versioned = client.post("/v2/models/double/versions/1/generate_stream", content=b"{")
        assert versioned.status_code == 400
        assert client.post("/v2/models/double/generate", content=b"x" * 8192).status_code == 413
    metrics = app.state.metrics
    assert metrics.sample("kiln_request_failures_total", model="double", status="400") == 2
    assert metrics.sample("kiln_request_failures_total", model="double", status="413") == 1
    assert metrics.sample("kiln_requests_total", model="double", outcome="failure") == 3
