"""Graphs over the external-data threshold through quantization: a model over protobuf's 2 GiB was
saved as one file by the quantizers' intermediate steps, which onnx writes without a word and nothing
parses back. A tiny model and a threshold lowered to a few hundred bytes stand in for a multi-GB one;
an inline save above the threshold fails here as one over 2 GiB does for real."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import _get_all_tensors, uses_external_data

from export import onnx_export, quantize

THRESHOLD = 512  # bytes: each 32x32 float32 weight (4 KiB; 1 KiB in int8) is over it


@pytest.fixture
def protobuf_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lower the threshold, and make an inline save of a model over it fail, as protobuf's limit does."""
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", THRESHOLD)
    real_save = onnx.save_model

    def save(model, f, *args, save_as_external_data: bool = False, **kwargs):  # noqa: ANN001, ANN202
        inline = not save_as_external_data and isinstance(model, onnx.ModelProto)
        if inline and inline_bytes(model) > THRESHOLD:
            raise ValueError("stand-in for protobuf's 2 GiB limit: saved inline, over the threshold")
        return real_save(model, f, *args, save_as_external_data=save_as_external_data, **kwargs)

    monkeypatch.setattr(onnx, "save_model", save)
    monkeypatch.setattr(onnx, "save", save)


def inline_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the tensors a save would write into the model file itself."""
    tensors = _get_all_tensors(model)
    return sum(t.ByteSize() for t in tensors if not uses_external_data(t))


def two_matmuls(path: Path) -> Path:
    """x [batch, 32] -> MatMul -> MatMul -> y, its weights in ``<name>.data`` as export writes a big model."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), f"w{i}") for i in (0, 1)
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"], name="mm0"),
        helper.make_node("MatMul", ["h", "w1"], ["y"], name="mm1"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx_export.save_model(model, path, external=True)
    return path


def run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_save_model_writes_tensors_over_the_threshold_to_a_data_file(tmp_path, protobuf_limit) -> None:
    src = two_matmuls(tmp_path / "src.onnx")
    dst = tmp_path / "copy.onnx"
    onnx_export.save_model(onnx.load(str(src)), dst)  # no ``external=``: the size decides
    assert Path(f"{dst}.data").is_file()
    x = np.ones((2, 32), np.float32)
    np.testing.assert_allclose(run(dst, x), run(src, x), rtol=1e-6)


def test_int8_dynamic_quantizes_a_model_over_the_threshold_and_leaves_no_prepared_graph(
    tmp_path, protobuf_limit
) -> None:
    src = two_matmuls(tmp_path / "fp32" / "model.onnx")
    dst = tmp_path / "int8" / "model.onnx"
    quantize.to_int8_dynamic(src, dst)
    x = np.random.default_rng(1).standard_normal((3, 32)).astype(np.float32)
    np.testing.assert_allclose(run(dst, x), run(src, x), rtol=0.1, atol=0.5)
    assert not [p.name for p in dst.parent.iterdir() if p.name.startswith("prepared")]


def test_int8_static_quantizes_a_model_over_the_threshold_and_leaves_no_prepared_graph(
    tmp_path, protobuf_limit
) -> None:
    src = two_matmuls(tmp_path / "fp32" / "model.onnx")
    dst = tmp_path / "int8" / "model.onnx"
    calibration = np.random.default_rng(2).standard_normal((8, 32)).astype(np.float32)
    quantize.to_int8(src, dst, calibration, input_name="x")
    np.testing.assert_allclose(run(dst, calibration[:3]), run(src, calibration[:3]), rtol=0.1, atol=2.0)
    assert not [p.name for p in dst.parent.iterdir() if p.name.startswith("prepared")]
