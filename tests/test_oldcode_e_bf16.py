"""A model with a TYPE_BF16 tensor is listed as Triton lists it (BF16) and fails to load in the embedded
backend, naming why: it loaded, was ready, listed its BF16 input as BYTES, and failed every request
(BF16 refused as an unknown datatype, BYTES by ONNX Runtime)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from onnx import TensorProto, helper

from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.ort_options import OrtOptions
from serving.execution.repository import Repository
from tests.repo_fixtures import write_onnx_entry

CONFIG = """name: "half"
platform: "onnxruntime_onnx"
max_batch_size: 0
input { name: "x" data_type: TYPE_BF16 dims: [ -1 ] }
output { name: "y" data_type: TYPE_FP32 dims: [ -1 ] }
"""


def _repository(root: Path) -> Path:
    """``y = float(x)`` over a bfloat16 input."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
        "half",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    )
    return write_onnx_entry(root, graph, CONFIG)


def test_a_bf16_tensor_is_listed_as_bf16_and_its_model_fails_to_load_naming_it(tmp_path: Path) -> None:
    repository = Repository(_repository(tmp_path))
    backend = OnnxRuntimeBackend(repository, OrtOptions(lone_request_threads=0))

    async def body():
        await backend.start()
        try:
            return await backend.model_ready("half")
        finally:
            await backend.stop()

    ready = asyncio.run(body())
    assert [(t.name, t.datatype) for t in repository.get("half").inputs()] == [("x", "BF16")]
    assert not ready
    assert "input 'x' of" in backend.load_error("half")
    assert "is TYPE_BF16, which the embedded ONNX Runtime backend cannot carry" in backend.load_error("half")
