"""Triton's classification extension answered as Triton 2.51 answers it (each case was sent to both the
gateway and the real Triton over the same repository): integer scores written as integers, outputs
of a type Triton cannot rank refused with its 400, and any output of an unbatched model ranked whole."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from serving.errors import BadRequest
from serving.execution.base import InferRequest
from serving.execution.datatypes import classification
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.ort_options import OrtOptions
from serving.execution.repository import Repository
from tests.repo_fixtures import write_onnx_entry


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.int8, np.int64, np.uint64])
def test_integer_scores_are_written_as_integers_as_triton_writes_them(dtype) -> None:
    """Triton writes a score with C++'s std::to_string of the output's type: ``"200:1"`` for an
    integer output; the gateway wrote ``"200.000000:1"`` for every type."""
    scores = np.array([[3, 120, 7, 0], [1, 1, 0, 9]], dtype)

    out = classification(scores, 2, None, batched=True)

    assert out.tolist() == [[b"120:1", b"7:2"], [b"9:3", b"1:0"]]


def test_int64_scores_are_ranked_as_integers_not_as_float64() -> None:
    """Above 2**53 two INT64 scores are one float64: the larger came second when it came later."""
    scores = np.array([2**53, 2**53 + 1, -(2**63)], np.int64)

    out = classification(scores, 3, None, batched=False)

    assert out.tolist() == [f"{2**53 + 1}:1".encode(), f"{2**53}:0".encode(), f"{-(2**63)}:2".encode()]


def test_float_scores_keep_six_decimals_and_ties_keep_the_lower_index_first() -> None:
    out = classification(np.array([0.25, 0.5, 0.5], np.float32), 3, ["a", "", "c"], batched=False)

    assert out.tolist() == [b"0.500000:1", b"0.500000:2:c", b"0.250000:0:a"]


@pytest.mark.parametrize(
    ("scores", "datatype"),
    [
        (np.array([[1.0, 2.0]], np.float16), "FP16"),
        (np.array([[True, False]]), "BOOL"),
        (np.array([[b"1", b"2"]], object), "BYTES"),
    ],
)
def test_an_output_triton_cannot_rank_is_refused_with_its_400(scores, datatype) -> None:
    """Triton 2.51 answers 400 "class result not available for output due to unsupported type 'FP16'"
    (BOOL, BYTES alike); the gateway ranked FP16 and BOOL and read BYTES text as numbers."""
    with pytest.raises(BadRequest, match=f"^class result not available .* unsupported type '{datatype}'$"):
        classification(scores, 1, None, batched=True)


CONFIG = """name: "flat"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [{ name: "x" data_type: TYPE_FP32 dims: [ 2, 3 ] }, { name: "z" data_type: TYPE_FP32 dims: [ 3 ] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [ 2, 3 ] }, { name: "w" data_type: TYPE_FP32 dims: [ 3 ] }]
"""


def _flat_repository(root: Path) -> Path:
    """An unbatched model: ``y = x`` ([2, 3]) and ``w = z`` ([3])."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["z"], ["w"])],
        "flat",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [3]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [3]),
        ],
    )
    return write_onnx_entry(root, graph, CONFIG)


def test_any_output_of_an_unbatched_model_is_ranked_whole_as_triton_ranks_it(tmp_path: Path) -> None:
    """Triton ranks an unbatched output's every element as one set of classes (``y`` [2, 3]: indices
    0 to 5); the gateway refused "needs a 1-D class axis", for ``w`` [3] too, as it read the dims of
    the model's first output whichever output was asked."""
    backend = OnnxRuntimeBackend(Repository(_flat_repository(tmp_path)), OrtOptions(lone_request_threads=0))
    inputs = {"x": np.array([[1, 5, 2], [9, 0, 3]], np.float32), "z": np.array([4, 6, 5], np.float32)}

    async def body():
        await backend.start()
        try:
            return await backend.infer(InferRequest("flat", inputs, classification={"y": 4, "w": 2}))
        finally:
            await backend.stop()

    answer = asyncio.run(body())
    assert answer.outputs["y"].tolist() == [b"9.000000:3", b"5.000000:1", b"3.000000:5", b"2.000000:2"]
    assert answer.outputs["w"].tolist() == [b"6.000000:1", b"5.000000:2"]
