"""The server metadata names every Triton extension the gateway serves, over HTTP and gRPC alike, as a
client that reads it before using one (tritonclient's ``get_server_metadata()["extensions"]``) needs:
``schedule_policy`` (the ``priority`` and ``timeout`` request parameters) and ``parameters`` (a request's
own) are served, so they are named, as Triton names them; the extensions it does not serve are not."""

from __future__ import annotations

import asyncio
from pathlib import Path

from onnx import TensorProto, helper

from serving.protocol.grpc_servicer import InferenceServicer
from tests.repo_fixtures import repository_client, write_onnx_entry

CONFIG = """name: "double"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
dynamic_batching { }
"""

SERVED = {"schedule_policy", "parameters"}
NOT_SERVED = {
    "sequence",
    "model_repository",
    "system_shared_memory",
    "cuda_shared_memory",
    "trace",
    "logging",
}


def _entry(root: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    write_onnx_entry(root, graph, CONFIG)


def _infer(client, parameters: dict) -> object:
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}
    return client.post("/v2/models/double/infer", json={**body, "parameters": parameters})


def test_http_server_metadata_names_the_schedule_policy_and_parameters_extensions_it_serves(
    tmp_path: Path,
) -> None:
    _entry(tmp_path)
    with repository_client(tmp_path) as client:
        extensions = set(client.get("/v2").json()["extensions"])
        assert extensions >= SERVED
        assert not NOT_SERVED & extensions
        # what the names promise: the schedule-policy parameters and a request's own are read
        served = _infer(client, {"priority": 1, "timeout": 10_000_000, "my_custom_parameter": 42})
        assert served.status_code == 200 and served.json()["outputs"][0]["data"] == [2.0, 4.0]
        assert _infer(client, {"priority": -1}).status_code == 400
        assert _infer(client, {"timeout": -1}).status_code == 400


def test_grpc_server_metadata_names_the_same_extensions() -> None:
    reply = asyncio.run(InferenceServicer(backend=None).ServerMetadata(None, None))
    assert set(reply.extensions) >= SERVED
    assert not NOT_SERVED & set(reply.extensions)
