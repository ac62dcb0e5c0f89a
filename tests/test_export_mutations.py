"""Export's proofs fail when they should: each test builds the broken artifact a check exists to catch
(a perturbed weight, swapped outputs, an output that reads other rows, NaN, another dtype, a fixed
batch axis, a decoder wrong only past the parity cases' lengths) and expects a refusal naming it."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from export import onnx_export, quantize
from export.classifier import ImageData
from export.onnx_export import OnnxExportError, classifier_graph, export_onnx, save_model, specialized_axes
from export.parity import (
    ParityReport,
    classifier_parity,
    compare_outputs,
    ort_session,
    session_runner,
    torch_runner,
)
from export.pipeline import export_checkpoint
from export.specs import GraphSpec, classifier_spec
from tests.classifier_exports import CHANNELS, CLASSES, SIZE, small_model, tiny_images, write_checkpoint

PREPROCESSING = {"input_size": [SIZE, SIZE], "channels": CHANNELS, "mean": [0.4], "std": [0.3]}


@dataclass(frozen=True)
class Exported:
    """LeNet's fp32 graph as export writes it, its spec and the PyTorch reference parity runs."""

    spec: GraphSpec
    reference: torch.nn.Module
    frozen: torch.nn.Module
    path: Path


@pytest.fixture(scope="module")
def lenet(tmp_path_factory) -> Exported:
    from export.freeze import freeze

    model, _ = small_model("lenet")
    frozen, _ = freeze(model, (torch.randn(2, CHANNELS, SIZE, SIZE),))
    spec = classifier_spec("lenet", PREPROCESSING, CLASSES, max_batch_size=64)
    images = torch.randint(0, 256, (2, SIZE, SIZE, CHANNELS), dtype=torch.uint8)
    path = tmp_path_factory.mktemp("lenet") / "model.onnx"
    export_onnx(classifier_graph(frozen, PREPROCESSING), spec, (images,), path)
    reference = classifier_graph(copy.deepcopy(model).eval(), PREPROCESSING)
    return Exported(spec, reference, frozen, path)


def _parity(lenet: Exported, model: onnx.ModelProto, tmp_path: Path, **kw) -> ParityReport:
    path = tmp_path / "mutant.onnx"
    save_model(model, path)
    data = tiny_images()
    run = session_runner(ort_session(path))
    return classifier_parity(torch_runner(lenet.reference, lenet.spec), run, lenet.spec, data.val, None, **kw)


def _rewire(model: onnx.ModelProto, output: str, nodes: list[onnx.NodeProto]) -> None:
    """Make ``output`` the last of ``nodes``, which read its former value as ``<output>_raw``."""
    for node in model.graph.node:
        node.output[:] = [f"{output}_raw" if o == output else o for o in node.output]
        node.input[:] = [f"{output}_raw" if i == output else i for i in node.input]
    model.graph.node.extend(nodes)


def _times_nan(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    model.graph.initializer.append(numpy_helper.from_array(np.array(np.nan, np.float32), "mutant_nan"))
    _rewire(model, output, [helper.make_node("Mul", [f"{output}_raw", "mutant_nan"], [output])])
    return model


def test_the_exported_graph_itself_passes_parity(lenet, tmp_path):
    report = _parity(lenet, onnx.load(str(lenet.path)), tmp_path)
    assert report.passed and max(report.outputs.values()) < 1e-5


@pytest.mark.parametrize(("delta", "refused"), [(1e-6, False), (1.0, True)])
def test_a_perturbed_weight_is_refused_naming_the_output_and_its_difference(lenet, tmp_path, delta, refused):
    model = onnx.load(str(lenet.path))
    weight = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] += delta
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    report = _parity(lenet, model, tmp_path)
    assert report.passed is not refused
    if refused:
        assert any(
            e.startswith("lenet.logits: max abs diff") and "(at {'batch': 1})" in e for e in report.errors
        )


def test_swapped_outputs_are_refused_naming_both(lenet, tmp_path):
    model = onnx.load(str(lenet.path))
    names = {"logits": "probabilities", "probabilities": "logits"}
    for node in model.graph.node:
        node.output[:] = [names.get(o, o) for o in node.output]
        node.input[:] = [names.get(i, i) for i in node.input]
    errors = _parity(lenet, model, tmp_path).errors
    assert any(e.startswith("lenet.logits: max abs diff") for e in errors)
    assert any(e.startswith("lenet.probabilities: max abs diff") for e in errors)


def test_an_output_that_reads_the_other_rows_of_its_batch_is_refused_at_a_batch_of_several(lenet, tmp_path):
    model = onnx.load(str(lenet.path))  # logits + (batch mean - logits) / 10: exact at a batch of one
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.1, np.float32), "mutant_tenth"))
    model.graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), "mutant_rows"))
    _rewire(
        model,
        "logits",
        [
            helper.make_node("ReduceMean", ["logits_raw", "mutant_rows"], ["mutant_mean"], keepdims=1),
            helper.make_node("Sub", ["mutant_mean", "logits_raw"], ["mutant_spread"]),
            helper.make_node("Mul", ["mutant_spread", "mutant_tenth"], ["mutant_shift"]),
            helper.make_node("Add", ["logits_raw", "mutant_shift"], ["logits"]),
        ],
    )
    errors = _parity(lenet, model, tmp_path).errors
    assert errors and all("'batch': 1}" not in e for e in errors)
    assert any(e.startswith("lenet.logits: max abs diff") and "{'batch': 7}" in e for e in errors)


def test_nan_where_pytorch_is_finite_fails_even_an_unbounded_tolerance(lenet, tmp_path):
    model = _times_nan(onnx.load(str(lenet.path)), "probabilities")
    for atol in (None, float("inf")):  # fp32's tolerance, and int8's (values not bounded)
        errors = _parity(lenet, model, tmp_path, atol=atol, min_agreement=0.0).errors
        assert errors and all(re.match(r"lenet\.probabilities: \d+ NaN/inf values", e) for e in errors), (
            errors
        )


def test_an_output_of_another_dtype_than_its_spec_is_refused_naming_both(lenet, tmp_path):
    model = onnx.load(str(lenet.path))  # config.pbtxt says TYPE_FP32: serving refuses to load this
    _rewire(
        model, "probabilities", [helper.make_node("Cast", ["probabilities_raw"], ["probabilities"], to=11)]
    )
    next(
        o for o in model.graph.output if o.name == "probabilities"
    ).type.tensor_type.elem_type = TensorProto.DOUBLE
    report = _parity(lenet, model, tmp_path)
    assert "lenet.probabilities: dtype float64 != spec float32 (at {'batch': 1})" in report.errors
    assert report.outputs["probabilities"] < 1e-5  # the values themselves agree


def test_compare_outputs_passes_matching_infinities_and_fails_new_ones():
    spec = classifier_spec("m", PREPROCESSING, 2)
    ref = {
        "logits": np.array([[-np.inf, 1.0]], np.float32),
        "probabilities": np.array([[0.0, 1.0]], np.float32),
    }
    assert compare_outputs(spec, ref, dict(ref), 1e-4) == ({"logits": 0.0, "probabilities": 0.0}, [])
    bad = {**ref, "probabilities": np.array([[np.inf, 1.0]], np.float32)}
    _, errors = compare_outputs(spec, ref, bad, float("inf"))
    assert errors == ["m.probabilities: 1 NaN/inf values where PyTorch's are finite"]


def _fixed_batch(model: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    for value in (*model.graph.input, *model.graph.output):
        if value.name in names:
            value.type.tensor_type.shape.dim[0].dim_value = 1
    return model


def test_an_output_whose_batch_axis_is_fixed_is_found_though_onnx_runtime_runs_it(lenet, tmp_path):
    model = _fixed_batch(onnx.load(str(lenet.path)), {"logits"})
    assert _parity(lenet, model, tmp_path).passed  # ONNX Runtime only warns: no value check sees it
    assert specialized_axes(model, lenet.spec) == ["logits[0]=1"]
    assert specialized_axes(onnx.load(str(lenet.path)), lenet.spec) == []


@pytest.mark.parametrize("fixed", ["images", "logits"])
def test_a_graph_exported_with_its_batch_axis_fixed_is_refused_naming_it(lenet, tmp_path, monkeypatch, fixed):
    real = onnx_export._export_and_simplify

    def specializing(module, spec, example, path):  # what a faulty exporter (either of them) writes
        real(module, spec, example, path)
        save_model(_fixed_batch(onnx.load(str(path)), {fixed}), path)

    monkeypatch.setattr(onnx_export, "_export_and_simplify", specializing)
    images = torch.randint(0, 256, (2, SIZE, SIZE, CHANNELS), dtype=torch.uint8)
    graph = classifier_graph(lenet.frozen, PREPROCESSING)
    fixed_sizes = rf"lenet: dynamic axes became fixed sizes in the graph: \['{fixed}\[0\]=1'\]"
    with pytest.raises(OnnxExportError, match=fixed_sizes):  # LeNet's pool: TorchScript cannot export it
        export_onnx(graph, lenet.spec, (images,), tmp_path / "model.onnx")


def test_an_int8_classifier_answering_nan_probabilities_is_refused_and_fp32_still_written(
    tmp_path, monkeypatch
):
    real = quantize.to_int8

    def nan_probabilities(src: Path, dst: Path, calibration: np.ndarray, **kw) -> Path:
        path = real(src, dst, calibration, **kw)
        save_model(_times_nan(onnx.load(str(path)), "probabilities"), path)
        return path

    monkeypatch.setattr(quantize, "to_int8", nan_probabilities)
    data = tiny_images()
    validation = ImageData(data.train[:8], data.val, data.val_labels, data.source)
    ckpt = write_checkpoint(tmp_path, "lenet")
    results = export_checkpoint(
        ckpt, tmp_path / "repo", validation=validation, tensorrt="off", precisions=("fp32", "int8")
    )
    status = {r.entry: (r.status, r.message) for r in results}
    assert status["lenet"][0] == "written"
    assert status["lenet_int8"][0] == "rejected"
    assert re.match(
        r"int8 graph malformed: lenet\.probabilities: \d+ NaN/inf values", status["lenet_int8"][1]
    )
    assert not (tmp_path / "repo" / "lenet_int8").exists()
    refused = json.loads((tmp_path / "repo" / ".kiln_refused.json").read_text())["lenet_int8"]
    assert refused["parity"]["int8_gate"] == {
        "gate": "int8 outputs well formed",
        "errors": refused["parity"]["errors"],
        "passed": False,
    }


def _late_bias(model: onnx.ModelProto, first_wrong_past: int) -> onnx.ModelProto:
    """The Transformer's decoder step, right while its cache holds fewer than ``first_wrong_past``
    entries (every decoder parity case) and pushed to token 7 from then on."""
    bias = np.zeros(model.graph.output[0].type.tensor_type.shape.dim[1].dim_value, np.float32)
    bias[7] = 50.0
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(bias, "mutant_bias"),
            numpy_helper.from_array(np.array([1], np.int64), "mutant_axis"),
            numpy_helper.from_array(np.array([first_wrong_past], np.int64), "mutant_past"),
        ]
    )
    _rewire(
        model,
        "log_probs",
        [
            helper.make_node("Shape", ["cache_mask"], ["mutant_shape"]),
            helper.make_node("Gather", ["mutant_shape", "mutant_axis"], ["mutant_len"]),
            helper.make_node("GreaterOrEqual", ["mutant_len", "mutant_past"], ["mutant_late"]),
            helper.make_node("Cast", ["mutant_late"], ["mutant_on"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["mutant_on", "mutant_bias"], ["mutant_push"]),
            helper.make_node("Add", ["log_probs_raw", "mutant_push"], ["log_probs"]),
        ],
    )
    return model


@dataclass(frozen=True)
class Translator:
    """The session's exported tiny Transformer: its checkpoint, rebuilt model and repository."""

    checkpoint: Path
    model: torch.nn.Module
    entries: Path

    def graph(self, entry: str) -> Path:
        return self.entries / entry / "1" / "model.onnx"


@pytest.fixture(scope="module")
def transformer(exported_translator_models) -> Translator:
    from export.pipeline import rebuild_checked
    from training.checkpoint import load_checkpoint

    root, errors = exported_translator_models
    assert "transformer" not in errors, errors
    path = root / "checkpoints" / "transformer.pt"
    return Translator(path, rebuild_checked(load_checkpoint(path), path), root / "model_repository")


def test_a_decoder_wrong_only_past_the_parity_cases_cache_lengths_is_refused_by_beam_parity(
    transformer, tmp_path
):
    from types import SimpleNamespace

    from export.beam_parity import beam_parity
    from export.results import ExportContext, ExportOptions
    from export.translator import _vocab_spec
    from export.translator_parity import DECODER_CASES
    from training.checkpoint import file_sha256, load_checkpoint

    path, model = transformer.checkpoint, transformer.model
    sources = [list(range(5, 25)), list(range(30, 44))]  # long: their translations outrun the cases
    ckpt = load_checkpoint(path)
    ctx = ExportContext(
        path, ckpt, model, file_sha256(path), tmp_path, ExportOptions(), "transformer", validation=sources
    )
    decoder = tmp_path / "decoder.onnx"
    late = 1 + max(case["past_len"] for case in DECODER_CASES)
    save_model(_late_bias(onnx.load(str(transformer.graph("transformer_decoder"))), late), decoder)
    kiln = json.loads((transformer.entries / "transformer_decoder" / "kiln.json").read_text())
    graphs = SimpleNamespace(
        spec=_vocab_spec(model),
        step_spec=kiln["step_spec"],
        encoder_path=transformer.graph("transformer_encoder"),
        decoder_path=decoder,
    )
    report = beam_parity(ctx, graphs)
    assert report.metrics["beam_agreement"] < 1.0
    assert re.match(r"beam search differs on \d/2 sentences; first: sentence \d PyTorch \[", report.errors[0])


def test_an_int8_encoders_parity_records_its_differences_unbounded_and_passes(transformer, tmp_path):
    from types import SimpleNamespace

    from export.onnx_export import EncoderGraph
    from export.quantize import to_int8_dynamic
    from export.translator import _vocab_spec, encoder_spec
    from export.translator_parity import encoder_parity

    spec = _vocab_spec(transformer.model)
    encoder = encoder_spec("transformer", transformer.model, spec, 64)
    module = EncoderGraph(transformer.model, encoder.output_names)
    graphs = SimpleNamespace(spec=spec, encoder=encoder, encoder_module=module)
    int8 = to_int8_dynamic(transformer.graph("transformer_encoder"), tmp_path / "int8.onnx")
    report = encoder_parity(graphs, int8, ParityReport(float("inf")))
    assert max(report.outputs.values()) > encoder.atol  # quantization's differences, recorded
    assert report.passed and report.as_dict()["errors"] == []  # kiln.json: "passed": true
    keys = next(t.name for t in encoder.outputs if t.dtype == "float32")
    broken = tmp_path / "nan.onnx"
    save_model(_times_nan(onnx.load(str(int8)), keys), broken)
    errors = encoder_parity(graphs, broken, ParityReport(float("inf"))).errors
    assert errors and all(re.match(rf"transformer_encoder\.{keys}: \d+ NaN/inf values", e) for e in errors)
