"""A classifier whose kiln.json names no ``input_size`` takes each image at its own size (the image
decoder keeps it): the friendly classify route stacked one request's images whole, so two sizes
were a 500 ("all input arrays must have the same shape"). Each run of one size is its own batch now."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from serving.app import create_app
from serving.settings import Settings
from tests.repo_fixtures import write_onnx_entry

CONFIG = """name: "anysize"
platform: "onnxruntime_onnx"
max_batch_size: 4
input { name: "images" data_type: TYPE_UINT8 dims: [ -1, -1, 1 ] }
output { name: "logits" data_type: TYPE_FP32 dims: [ 3 ] }
"""


def _repository(root: Path) -> Path:
    """``logits = mean(pixels) * [0.01, 0.02, 0.03]``, over images of any height and width."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["images"], ["pixels"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["pixels"], ["mean"], axes=[1, 2, 3], keepdims=1),
            helper.make_node("Reshape", ["mean", "column"], ["means"]),
            helper.make_node("Mul", ["means", "weights"], ["logits"]),
        ],
        "anysize",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", "height", "width", 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [
            numpy_helper.from_array(np.array([-1, 1], np.int64), "column"),
            numpy_helper.from_array(np.array([0.01, 0.02, 0.03], np.float32), "weights"),
        ],
    )
    write_onnx_entry(root, graph, CONFIG)
    kiln = {
        "task": "classify",
        "roles": {"images": "images", "logits": "logits"},
        "preprocessing": {"channels": 1},
    }
    (root / "anysize" / "kiln.json").write_text(json.dumps(kiln))
    return root


def _png(width: int, height: int, grey: int) -> str:
    buffer = io.BytesIO()
    Image.new("L", (width, height), grey).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_images_of_several_sizes_are_classified_each_at_its_own_size(tmp_path: Path) -> None:
    images = [_png(4, 4, 50), _png(6, 5, 200), _png(6, 5, 120), _png(4, 4, 250)]
    with TestClient(create_app(Settings(model_repository=_repository(tmp_path), grpc_port=0))) as client:

        def classify(batch: list[str]) -> list:
            answer = client.post("/v1/models/anysize/classify", json={"images": batch, "top_k": 3})
            assert answer.status_code == 200, answer.text
            return answer.json()["predictions"]

        together = classify(images)
        alone = [classify([image])[0] for image in images]

    assert together == alone
    assert len({p[0]["score"] for p in together}) == 4  # four images, four answers, in their order
