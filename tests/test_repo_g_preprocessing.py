"""A classifier whose kiln.json ``preprocessing`` the classify route cannot lay an image out by (an
``input_size`` that is no [height, width], a ``dtype`` numpy does not know, ...) fails its load naming
the file and the field, while the other entries serve: it loaded READY, and every image sent to it was
a 500 ("internal error: ValueError") naming neither."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from serving.app import create_app
from serving.execution.entry_config import preprocessing_problems
from serving.settings import Settings
from tests.repo_fixtures import write_onnx_entry

CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 4
input {{ name: "images" data_type: TYPE_UINT8 dims: [ 4, 4, 1 ] }}
output {{ name: "logits" data_type: TYPE_FP32 dims: [ 3 ] }}
"""
GOOD = {"input_size": [4, 4], "channels": 1, "layout": "NHWC", "dtype": "uint8"}


def _entry(root: Path, name: str, preprocessing: dict) -> None:
    """``logits = mean(pixels) * [1, 2, 3]`` over 4 x 4 grey images, with ``preprocessing``."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["images"], ["pixels"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["pixels"], ["mean"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Unsqueeze", ["mean", "axis"], ["column"]),
            helper.make_node("Mul", ["column", "weights"], ["logits"]),
        ],
        name,
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 4, 4, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [
            numpy_helper.from_array(np.array([1], "int64"), "axis"),
            numpy_helper.from_array(np.array([1, 2, 3], "float32"), "weights"),
        ],
    )
    write_onnx_entry(root, graph, CONFIG.format(name=name))
    kiln = {"task": "classify", "roles": {"images": "images", "logits": "logits"}}
    (root / name / "kiln.json").write_text(json.dumps({**kiln, "preprocessing": preprocessing}))


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("L", (4, 4), 100).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_an_input_size_that_is_no_height_and_width_fails_the_load_naming_it_and_the_others_serve(tmp_path):
    _entry(tmp_path, "good", GOOD)
    _entry(tmp_path, "broken", {**GOOD, "input_size": "224"})
    with TestClient(create_app(Settings(model_repository=tmp_path, grpc_port=0))) as client:
        good = client.post("/v1/models/good/classify", json={"images": [_png()], "top_k": 1})
        broken = client.post("/v1/models/broken/classify", json={"images": [_png()], "top_k": 1})
        index = {m["name"]: m for m in client.post("/v2/repository/index", json={}).json()}
    assert good.status_code == 200, good.text
    assert good.json()["predictions"][0][0]["index"] == 2
    assert broken.status_code in (404, 503), broken.text
    assert "'preprocessing.input_size' must be [height, width] in pixels, got '224'" in broken.json()["error"]
    assert index["broken"]["state"] == "UNAVAILABLE"
    assert "broken/kiln.json" in index["broken"]["reason"]
    assert index["good"]["state"] == "READY"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("input_size", [224]),
        ("input_size", [224, 0]),
        ("input_size", None),
        ("channels", "3"),
        ("channels", 0),
        ("layout", "nchw"),
        ("dtype", "float128x"),
        ("dtype", None),
    ],
)
def test_each_unreadable_preprocessing_field_is_named(field, value):
    assert [p.split("'")[1] for p in preprocessing_problems({**GOOD, field: value})] == [
        f"preprocessing.{field}"
    ]


def test_what_export_writes_and_what_it_leaves_out_are_readable():
    exported = {**GOOD, "input_size": [32, 32], "mean": [0.3], "std": [0.3], "scale": 1 / 255}
    assert preprocessing_problems(exported) == []
    assert preprocessing_problems({"channels": 1}) == []  # each image at its own size
    assert preprocessing_problems({}) == []
