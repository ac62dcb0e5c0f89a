"""A config's ``reshape`` is honoured as Triton honours it: a client sends and receives the ``dims`` the
metadata lists, the model sees its own shape. Export writes every per-row scalar of a translator's
decoder this way (``dims: [1]`` reshaped to ``[]``), so a KServe client following the gateway's own
metadata, or a gateway driving another's decoder (``--triton-translate scheduler``), sent ``[n, 1]``
and ONNX Runtime refused its rank."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from serving.errors import BadRequest
from serving.execution.base import InferRequest
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.ort_options import OrtOptions
from serving.execution.repository import Repository
from tests.repo_fixtures import write_onnx_entry

CONFIG = """name: "rows"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{ name: "place" data_type: TYPE_INT64 dims: [ 1 ] reshape: { shape: [ ] } },
       { name: "x" data_type: TYPE_FP32 dims: [ 3 ] }]
output [{ name: "next" data_type: TYPE_INT64 dims: [ 1 ] reshape: { shape: [ ] } },
        { name: "y" data_type: TYPE_FP32 dims: [ 3 ] }]
dynamic_batching { }
"""


def _repository(root: Path) -> Path:
    """``next = place + 1`` on a ``[batch]`` input, ``y = 2 x`` beside it."""
    one = helper.make_tensor("one", TensorProto.INT64, [], [1])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["place", "one"], ["next"]), helper.make_node("Mul", ["x", "two"], ["y"])],
        "rows",
        [
            helper.make_tensor_value_info("place", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
        ],
        [
            helper.make_tensor_value_info("next", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
        ],
        [one, two],
    )
    return write_onnx_entry(root, graph, CONFIG)


def test_inputs_and_outputs_travel_in_the_configs_dims_and_reach_the_model_reshaped(tmp_path: Path) -> None:
    backend = OnnxRuntimeBackend(Repository(_repository(tmp_path)), OrtOptions(lone_request_threads=0))

    async def body():
        await backend.start()
        try:
            meta = backend.metadata("rows")
            requests = [
                InferRequest(
                    "rows", {"place": np.array([[i], [10 + i]]), "x": np.full((2, 3), i, np.float32)}
                )
                for i in range(6)
            ]
            answers = await asyncio.gather(*(backend.infer(r) for r in requests))  # merged in batches
            with pytest.raises(BadRequest, match=r"input 'place': expected shape \[-1, 1\], got \[2\]"):
                await backend.infer(
                    InferRequest("rows", {"place": np.array([1, 2]), "x": np.ones((2, 3), np.float32)})
                )
            return meta, answers
        finally:
            await backend.stop()

    meta, answers = asyncio.run(body())
    assert {m.name: m.shape for m in meta.inputs} == {"place": [-1, 1], "x": [-1, 3]}
    assert {m.name: m.shape for m in meta.outputs} == {"next": [-1, 1], "y": [-1, 3]}
    for i, answer in enumerate(answers):
        assert answer.outputs["next"].tolist() == [[i + 1], [11 + i]]
        np.testing.assert_array_equal(answer.outputs["y"], np.full((2, 3), 2 * i, np.float32))
