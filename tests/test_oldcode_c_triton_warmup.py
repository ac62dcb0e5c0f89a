"""The warm-up samples of a generated config are ones Triton runs: an unbatched model's sample had batch
size 0 (Triton logs "Skipping batch 0 warmup sample" and never warms it), and a per-row scalar input
(dims [1] reshaped to []) had warm-up dims [] (Triton refused to load the model: "unexpected shape for
input ... Expected [-1,1], got [1]")."""

from __future__ import annotations

from pathlib import Path

import pytest
from onnx import TensorProto, helper

from export.triton_config import TritonModelConfig, TritonTensor, parse_pbtxt, to_pbtxt
from serving.triton import TritonServer, find_triton
from tests.repo_fixtures import write_onnx_entry

UNBATCHED = TritonModelConfig(
    "unbatched",
    "onnxruntime_onnx",
    0,
    (TritonTensor("x", "TYPE_FP32", (3,)),),
    (TritonTensor("y", "TYPE_FP32", (3,)),),
)
SCALAR = TritonModelConfig(
    "scalar",
    "onnxruntime_onnx",
    8,
    (TritonTensor("place", "TYPE_INT64", ()),),
    (TritonTensor("next", "TYPE_INT64", ()),),
)


def test_an_unbatched_configs_warmup_sample_has_batch_size_one():
    (sample,) = parse_pbtxt(to_pbtxt(UNBATCHED)).model_warmup
    assert sample.batch_size == 1 and list(sample.inputs["x"].dims) == [3]


def test_a_per_row_scalars_warmup_dims_are_its_config_dims():
    config = parse_pbtxt(to_pbtxt(SCALAR))
    (sample,) = config.model_warmup
    assert list(sample.inputs["place"].dims) == list(config.input[0].dims) == [1]


def _repository(root: Path) -> Path:
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    unbatched = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "unbatched",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [two],
    )
    one = helper.make_tensor("one", TensorProto.INT64, [], [1])
    scalar = helper.make_graph(
        [helper.make_node("Add", ["place", "one"], ["next"])],
        "scalar",
        [helper.make_tensor_value_info("place", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("next", TensorProto.INT64, ["batch"])],
        [one],
    )
    write_onnx_entry(root, unbatched, to_pbtxt(UNBATCHED))
    return write_onnx_entry(root, scalar, to_pbtxt(SCALAR))


@pytest.mark.triton
@pytest.mark.skipif(
    find_triton() is None, reason="the tritonserver binary from nvidia-pytriton is not installed"
)
def test_the_real_triton_loads_and_runs_every_generated_warmup_sample(tmp_path):
    (tmp_path / "repo").mkdir()
    server = TritonServer(_repository(tmp_path / "repo"), tmp_path / "work", log_verbose=1)
    with server:  # raises TritonError with its log where a model fails to load
        pass
    log = server.log_path.read_text()
    assert "Skipping batch 0 warmup sample" not in log
    for model in ("unbatched", "scalar"):
        assert f"model '{model}' instance {model}_0_0 is running warmup sample 'zero_batch'" in log
