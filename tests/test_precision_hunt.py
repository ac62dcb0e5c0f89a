"""Reduced-precision entries against fp32: what the int8 quantizer writes, measured on a small hand-built
classifier graph (no model is trained or exported here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export import quantize
from export.parity import ort_session, session_runner

SIZE, CHANNELS, CLASSES = 8, 8, 4


def _classifier_graph(path: Path) -> Path:
    """uint8 NHWC images -> Conv of all-positive filters -> Gemm -> logits, probabilities: the shape of
    an exported classifier, with products a bright image drives to the top of uint8 x int8."""
    rng = np.random.default_rng(0)
    conv = np.abs(rng.normal(0, 1, (CHANNELS, 1, 3, 3))).astype(np.float32)
    fc = rng.normal(0, 1, (CLASSES, CHANNELS * SIZE * SIZE)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["images"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["nchw"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["pixels", "scale"], ["x"]),
        helper.make_node("Conv", ["x", "conv"], ["features"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["features"], ["relu"]),
        helper.make_node("Flatten", ["relu"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    return _saved_classifier(path, nodes, {"conv": conv, "fc": fc})


def _saved_classifier(path: Path, nodes: list, weights: dict[str, np.ndarray]) -> Path:
    """``nodes`` as a classifier graph (uint8 NHWC ``images`` in, ``logits`` and ``probabilities`` out,
    ``scale`` = 1/255 beside ``weights``) saved at ``path``."""
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", SIZE, SIZE, 1])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", CLASSES]),
        ],
        [
            numpy_helper.from_array(np.array(1 / 255, np.float32), "scale"),
            *(numpy_helper.from_array(value, name) for name, value in weights.items()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def _bright_images() -> np.ndarray:
    rng = np.random.default_rng(1)
    images = np.full((4, SIZE, SIZE, 1), 255, np.uint8)
    images[1] = 0
    images[2] = rng.integers(0, 256, (SIZE, SIZE, 1))
    return images


def _weights(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {
        t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == TensorProto.INT8
    }


def test_static_int8_weights_stay_within_seven_bits_so_products_cannot_saturate(tmp_path: Path) -> None:
    src = _classifier_graph(tmp_path / "fp32.onnx")
    int8 = quantize.to_int8(src, tmp_path / "int8" / "model.onnx", _bright_images())
    weights = _weights(int8)
    assert weights, "the quantized graph holds no int8 weights"
    for name, values in weights.items():
        assert values.min() >= -64 and values.max() <= 64, f"{name} spans [{values.min()}, {values.max()}]"


def test_static_int8_classifier_follows_fp32_on_an_all_white_image(tmp_path: Path) -> None:
    """On a CPU without VNNI (AVX2) full-range int8 weights saturated the conv's sums: the logits of an
    all-255 image were 16 % off fp32 (on a VNNI CPU both settings agree; this one checks the values)."""
    src = _classifier_graph(tmp_path / "fp32.onnx")
    images = _bright_images()
    int8 = quantize.to_int8(src, tmp_path / "int8" / "model.onnx", images)
    want = session_runner(ort_session(src))({"images": images})["logits"]
    got = session_runner(ort_session(int8))({"images": images})["logits"]
    error = np.abs(want - got).max() / np.abs(want).max()
    assert error < 0.05, f"int8 logits {100 * error:.1f}% of the largest logit away from fp32"


def test_the_documented_int8_gate_example_passes_at_exactly_its_maximum_drop() -> None:
    """docs/kiln-json.md: 0.91 -> 0.905 is a 0.5-point drop, passed at --int8-max-drop 0.5 (float
    subtraction made it 0.5000000000000004 and refused it)."""
    gate = quantize.GateResult(accuracy_fp32=0.91, accuracy_int8=0.905, max_drop=0.5)
    assert gate.passed and gate.reason() == ""
    assert gate.as_dict()["passed"] is True
    assert not quantize.GateResult(accuracy_fp32=0.91, accuracy_int8=0.904, max_drop=0.5).passed


def test_one_image_lost_in_two_hundred_passes_a_half_point_gate() -> None:
    assert quantize.GateResult(199 / 200, 198 / 200, max_drop=0.5).passed
    assert not quantize.GateResult(199 / 200, 197 / 200, max_drop=0.5).passed


def test_an_agreement_gate_met_exactly_passes() -> None:
    """7 of 10 classes changed bounds the drop by 70 points: --int8-max-drop 70 allows it (1 - 0.7 is
    0.30000000000000004)."""
    assert quantize.AgreementGate(agreement=0.3, images=10, max_drop=70.0, data="random").passed
    assert not quantize.AgreementGate(agreement=0.2, images=10, max_drop=70.0, data="random").passed
    assert not quantize.AgreementGate(agreement=1.0, images=0, max_drop=70.0, data="random").passed


def test_a_translation_gate_met_exactly_passes() -> None:
    """A BLEU drop of 0.2 (99.8 -> 99.6: 0.20000000000000284) at --int8-max-bleu-drop 0.2."""
    exact = quantize.TranslationGate(0.9, 10, 99.8, 99.6, "references", min_agreement=0.9, max_bleu_drop=0.2)
    assert exact.passed and exact.as_dict()["passed"] is True
    assert not quantize.TranslationGate(0.8, 10, 99.8, 99.6, "references", min_agreement=0.9).passed
    assert not quantize.TranslationGate(0.9, 10, 99.8, 99.5, "references", min_agreement=0.9).passed


def test_static_int8_outputs_are_not_rounded_to_uint8_steps(tmp_path: Path) -> None:
    """The logits' Gemm and the Softmax were quantized too: probabilities came in steps of 1/255 (many
    exactly 0, rows not summing to 1) and logits tied within a step."""
    src = _classifier_graph(tmp_path / "fp32.onnx")
    images = _bright_images()
    int8 = quantize.to_int8(src, tmp_path / "int8" / "model.onnx", images)
    graph = onnx.load(str(int8)).graph
    outputs = {o.name for o in graph.output}
    producers = {n.op_type for n in graph.node if outputs.intersection(n.output)}
    assert producers == {"Gemm", "Softmax"}
    got = session_runner(ort_session(int8))({"images": images})
    logits = got["logits"].astype(np.float64)
    softmax = np.exp(logits - logits.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    assert np.abs(got["probabilities"] - softmax).max() < 1e-6
    assert np.allclose(got["probabilities"].sum(-1), 1.0, atol=1e-6)


def test_a_nin_shaped_heads_last_convolution_stays_float_with_the_outputs(tmp_path: Path) -> None:
    """NiN's logits are Flatten(GlobalAveragePool(Relu(Conv))): excluding only the nodes that write the
    outputs left that Conv's output quantized, the logits again in uint8 steps."""
    rng = np.random.default_rng(0)
    first = np.abs(rng.normal(0, 1, (CHANNELS, 1, 3, 3))).astype(np.float32)
    head = rng.normal(0, 1, (CLASSES, CHANNELS, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["images"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["nchw"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["pixels", "scale"], ["x"]),
        helper.make_node("Conv", ["x", "first"], ["features"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["features"], ["hidden"]),
        helper.make_node("Conv", ["hidden", "head"], ["scores"]),
        helper.make_node("Relu", ["scores"], ["positive"]),
        helper.make_node("GlobalAveragePool", ["positive"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    _saved_classifier(tmp_path / "fp32.onnx", nodes, {"first": first, "head": head})
    int8 = quantize.to_int8(tmp_path / "fp32.onnx", tmp_path / "int8" / "model.onnx", _bright_images())
    quantized = onnx.load(str(int8)).graph
    consumers = {i for n in quantized.node for i in n.input if n.op_type == "QuantizeLinear"}
    head_conv = [n for n in quantized.node if n.op_type == "Conv" and "head" in n.input[1]]
    assert head_conv and head_conv[0].output[0] not in consumers  # its output is not re-quantized
    assert not [n for n in quantized.node if n.op_type == "DequantizeLinear" and n.output[0] == "pooled"]
