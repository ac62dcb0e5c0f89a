"""A Triton repository's ensemble (its version directory empty, as Triton's ensembles have it) is not
served by the embedded backend: an inference call to it answers the same 404 as its metadata, with
why it did not load. It answered "model 'pipeline' has no servable version", which sent its owner
looking at version directories instead of at ``--backend triton``."""

from __future__ import annotations

from pathlib import Path

from onnx import TensorProto, helper

from tests.repo_fixtures import repository_client, write_onnx_entry

NEGATE = """platform: "onnxruntime_onnx"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""
PIPELINE = """platform: "ensemble"
max_batch_size: 4
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 3 ] } ]
ensemble_scheduling { step [ { model_name: "negate" model_version: -1
  input_map { key: "x" value: "IN" } output_map { key: "y" value: "OUT" } } ] }
"""


def test_an_inference_call_to_an_ensemble_says_why_it_is_not_served(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])],
        "negate",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )
    root = write_onnx_entry(tmp_path, graph, NEGATE)
    (root / "pipeline" / "1").mkdir(parents=True)
    (root / "pipeline" / "config.pbtxt").write_text(PIPELINE)
    body = {"inputs": [{"name": "IN", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    with repository_client(root) as client:
        metadata = client.get("/v2/models/pipeline")
        answer = client.post("/v2/models/pipeline/infer", json=body)
        served = client.post(
            "/v2/models/negate/infer", json={**body, "inputs": [{**body["inputs"][0], "name": "x"}]}
        )
    assert answer.status_code == 404
    assert answer.json() == metadata.json()
    assert "platform 'ensemble' needs the triton backend" in answer.json()["error"]
    assert served.status_code == 200 and served.json()["outputs"][0]["data"] == [-1.0, -2.0, -3.0]
