"""No TensorRT engine from the int8 graph: TensorRT's ONNX parser takes Q/DQ as symmetric int8 only.

onnx-tensorrt's QuantizeLinear/DequantizeLinear importer reads a uint8 zero point as int8 (with a
warning) and refuses a DequantizeLinear whose zero point is not all zeros ("TensorRT only supports
symmetric quantization"). The classifier's int8 graph is ONNX Runtime's CPU format: uint8 activations,
the input's zero point far from 0. The stand-in ``build_engine`` here applies that rule to the graph it
is handed, so no GPU or TensorRT is needed to see what a machine with both did: the export of the
checkpoint failed whole at its int8 engine, writing none of its entries.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from export import tensorrt
from tests.test_export_tensorrt import install_fake_tensorrt


def _tensorrt_refusal(onnx_path: Path) -> str | None:
    """Why TensorRT's ONNX parser refuses the graph's Q/DQ nodes, or None (the rule quoted above)."""
    model = onnx.load(str(onnx_path))
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        zero_point = initializers.get(node.input[2])
        if zero_point is None:
            continue
        if zero_point.any():
            return f"{node.name}: TensorRT only supports symmetric quantization ({zero_point.dtype})"
    return None


@pytest.fixture
def parsing_tensorrt(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """TensorRT 'available': each engine is a small file, built only from a graph TensorRT parses."""
    return install_fake_tensorrt(monkeypatch, _tensorrt_refusal)


def test_the_int8_graph_is_one_tensorrt_refuses(tmp_path: Path):
    """The premise, on the real int8 graph: its input's DequantizeLinear has a uint8 zero point not 0."""
    from export.pipeline import export_checkpoint
    from export.quantize import GateResult
    from tests.classifier_exports import tiny_images, write_checkpoint

    ckpt, repo = write_checkpoint(tmp_path, "lenet"), tmp_path / "repo"
    export_checkpoint(
        ckpt,
        repo,
        precisions=("fp32", "int8"),
        validation=tiny_images(),
        tensorrt="off",
        accuracy_hook=lambda g: GateResult(g.accuracy_fp32, g.accuracy_fp32, g.max_drop),
    )
    assert _tensorrt_refusal(repo / "lenet_int8" / "1" / "model.onnx")


def test_an_int8_export_with_tensorrt_builds_the_other_engines_and_says_why_not_the_int8_one(
    tmp_path: Path, parsing_tensorrt: list[str]
):
    """Before: the int8 graph went to TensorRT, whose parser refused it, and the TensorRTError failed the
    checkpoint's export: none of lenet, lenet_int8, lenet_trt was written (``make export`` on a GPU
    machine with TensorRT: fp32,fp16,int8 by default)."""
    from export.pipeline import export_checkpoint
    from export.quantize import GateResult
    from export.repository import write_entry
    from tests.classifier_exports import tiny_images, write_checkpoint

    ckpt, repo = write_checkpoint(tmp_path, "lenet"), tmp_path / "repo"

    def stale_engine(tmp: Path) -> dict[str, object]:  # an int8 engine an earlier export left
        (tmp / "1").mkdir()
        (tmp / "1" / "model.plan").write_bytes(b"plan")
        return {"task": "classify", "precision": "int8"}

    write_entry(repo, "lenet_int8_trt", stale_engine)
    options = {
        "precisions": ("fp32", "int8"),
        "validation": tiny_images(),
        "tensorrt": "auto",
        "accuracy_hook": lambda g: GateResult(g.accuracy_fp32, g.accuracy_fp32, g.max_drop),
    }
    results = {r.entry: r for r in export_checkpoint(ckpt, repo, **options)}
    status = {name: r.status for name, r in results.items()}
    assert status == {
        "lenet": "written",
        "lenet_int8": "written",
        "lenet_trt": "written",
        "lenet_int8_trt": "rejected",
    }
    assert parsing_tensorrt == ["fp32"]
    assert results["lenet_int8_trt"].message == tensorrt.NO_INT8_ENGINE
    assert not (repo / "lenet_int8_trt").exists()  # a stale engine is no longer served
    again = {r.entry: r for r in export_checkpoint(ckpt, repo, **options)}
    assert {r.status for r in again.values()} == {"up to date"} and parsing_tensorrt == ["fp32"]
    assert tensorrt.NO_INT8_ENGINE in again["lenet_int8_trt"].message


def test_a_gpu_config_of_the_int8_graph_asks_triton_for_no_tensorrt_accelerator():
    """Before: ``precision_mode: INT8``, so Triton's onnxruntime backend ran the uint8 Q/DQ graph on the
    TensorRT EP (``trt_int8_enable``), whose parser refuses or misreads those nodes (rule above)."""
    from export.specs import classifier_spec
    from export.triton_config import config_from_spec, gpu_flavour, parse_pbtxt, to_pbtxt
    from tests.test_export_tensorrt import PREP

    base = config_from_spec(classifier_spec("lenet_int8", PREP, 10))
    int8 = parse_pbtxt(to_pbtxt(gpu_flavour(base, precision="int8")))
    assert not int8.HasField("optimization")
    assert int8.instance_group[0].kind == int8.instance_group[0].KIND_GPU  # still a GPU config
    fp16 = parse_pbtxt(to_pbtxt(gpu_flavour(base, precision="fp16")))
    (accelerator,) = fp16.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"


def test_tritons_device_allocator_key_is_named_as_one_the_embedded_backend_does_not_honour():
    """Triton's onnxruntime backend reads ``session.use_device_allocator_for_initializers`` (its README and
    ``onnxruntime.cc``); before, the list held the key without its prefix, so the real one passed unnamed."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from serving.execution.loaded_model import unhonoured_fields

    text = 'parameters { key: "session.use_device_allocator_for_initializers" value { string_value: "1" } }'
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert unhonoured_fields(config) == ["parameters ['session.use_device_allocator_for_initializers']"]
