"""A Triton repository whose ONNX model is a directory: ``1/model.onnx/model.onnx`` beside its external
weights, the layout Triton's onnxruntime backend loads (a named model file that is a directory holds
the model as ``model.onnx``). The gateway failed its load with "1/model.onnx does not exist"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.repo_fixtures import repository_client

CONFIG = """platform: "onnxruntime_onnx"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""


def _directory_model(root: Path) -> Path:
    """``y = x + w`` (``w`` stored outside the graph, in ``weights.bin``) as ``scaled/1/model.onnx/``."""
    weights = numpy_helper.from_array(np.array([1.0, 2.0, 3.0], np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = root / "scaled" / "1" / "model.onnx"
    folder.mkdir(parents=True)
    onnx.save(
        model, folder / "model.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    (root / "scaled" / "config.pbtxt").write_text(CONFIG)
    return root


def test_a_model_file_that_is_a_directory_is_served_from_the_model_onnx_inside_it(tmp_path: Path) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 1, 1]}]}
    with repository_client(_directory_model(tmp_path)) as client:
        (entry,) = client.post("/v2/repository/index", json={}).json()
        answer = client.post("/v2/models/scaled/infer", json=body)
    assert entry["state"] == "READY", entry["reason"]
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [2.0, 3.0, 4.0]
