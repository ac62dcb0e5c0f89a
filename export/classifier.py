"""Classifier export: freeze, ONNX with in-graph preprocessing, parity, fp16/int8 and TensorRT entries."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export import batching, quantize, repository, tensorrt
from export.freeze import FreezeReport, freeze
from export.onnx_export import classifier_graph, copy_graph, export_onnx
from export.parity import ParityReport, classifier_parity, ort_session, session_runner, torch_runner
from export.results import RANDOM_IMAGES_SOURCE, Entry, EntryResult, ExportContext, ExportOptions
from export.specs import GraphSpec, classifier_spec
from export.triton_config import TritonModelConfig, config_from_spec, gpu_flavour, to_pbtxt
from training.checkpoint import CheckpointError

log = logging.getLogger(__name__)

FP16_ATOL = 5e-2
FP16_MIN_AGREEMENT = 0.99
CALIBRATION_IMAGES = 256
RANDOM_IMAGES = 256


@dataclass
class ImageData:
    """uint8 NHWC images: training (calibration) and validation (agreement, accuracy) with labels."""

    train: np.ndarray
    val: np.ndarray
    val_labels: np.ndarray | None
    source: str


def _nhwc(images: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())


def load_image_data(ckpt: dict[str, Any], spec: GraphSpec) -> ImageData:
    """The checkpoint's own train/validation split, or random pixels (with a warning) when unavailable."""
    try:
        from training.data.images import load_splits

        train, val = load_splits(ckpt["data"])
        return ImageData(_nhwc(train.images), _nhwc(val.images), val.labels.numpy(), "validation split")
    except Exception as exc:  # noqa: BLE001 - parity still runs on random pixels, and says so
        log.warning(
            "%s: validation split unavailable (%s); using random images (--data-path: where the data is now)",
            spec.name,
            exc,
        )
    rng = np.random.default_rng(0)
    shape = spec.concrete_shape(spec.inputs[0], {"batch": RANDOM_IMAGES})
    pixels = (rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(2))
    return ImageData(*pixels, None, RANDOM_IMAGES_SOURCE)


@dataclass
class Built:
    """One candidate entry built in the workspace: its graph, platform and parity report."""

    entry: str
    precision: str
    model_file: Path
    platform: str
    report: ParityReport
    gate: quantize.GateResult | quantize.AgreementGate | quantize.MalformedGraph | None = None  # int8


def _entries(ctx: ExportContext) -> dict[str, Entry]:
    """The ONNX entry of each requested precision, by precision."""
    return _precision_entries(ctx.name, ctx.options.precisions)


def _precision_entries(name: str, precisions: tuple[str, ...]) -> dict[str, Entry]:
    suffix = {"fp32": "", "fp16": "_fp16", "int8": "_int8"}
    return {p: Entry(f"{name}{suffix[p]}", p) for p in precisions}


def entry_names(name: str, options: ExportOptions) -> tuple[str, ...]:
    """Every entry classifier ``name`` may write with ``options``: one per precision, and their
    TensorRT twins where engines are built (``export_classifier``)."""
    entries = list(_precision_entries(name, options.precisions).values())
    engines = [_trt(e) for e in entries] if tensorrt.should_build(options.tensorrt)[0] else []
    return tuple(e.name for e in entries + engines)


def _trt(entry: Entry) -> Entry:
    return Entry(f"{entry.name}_trt", entry.precision, engine=True)


def _freeze_and_export(ctx: ExportContext, work: Path) -> tuple[GraphSpec, Any, Path, FreezeReport]:
    prep = ctx.ckpt["preprocessing"]
    model = ctx.model
    h, w = prep["input_size"]
    example = torch.randn(2, int(prep["channels"]), int(h), int(w))
    _check_runs(ctx, model, example)
    frozen, freeze_report = freeze(model, (example,))
    with torch.no_grad():
        classes = frozen(example).shape[-1]
    spec = classifier_spec(ctx.name, prep, classes, max_batch_size=ctx.options.max_batch_size)
    reference = classifier_graph(_eval_copy(model), prep)
    ctx.step("export ONNX")
    images = torch.randint(0, 256, (2, int(h), int(w), int(prep["channels"])), dtype=torch.uint8)
    onnx_path = export_onnx(classifier_graph(frozen, prep), spec, (images,), work / "fp32" / "model.onnx")
    return spec, reference, onnx_path, freeze_report


def _check_runs(ctx: ExportContext, model: torch.nn.Module, example: torch.Tensor) -> None:
    """Refuse, naming the checkpoint, a model that fails on the images its ``preprocessing`` describes
    (an ``input_size`` too small for its convolutions and pooling): the failure was a traceback from
    inside ``freeze``."""
    try:
        with torch.no_grad():
            model(example)
    except RuntimeError as exc:
        _, channels, h, w = example.shape
        reason = " ".join(str(exc).split())[:300]
        raise CheckpointError(
            f"{ctx.path}: the model does not run on the images its 'preprocessing' describes ({channels} "
            f"channel(s), {h}x{w} pixels): {reason}"
        ) from exc


def _eval_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    ref = copy.deepcopy(model).eval()
    if hasattr(ref, "remove_auxiliary"):
        ref.remove_auxiliary()
    return ref


def _check(
    ctx: ExportContext, spec: GraphSpec, reference: Any, path: Path, data: ImageData, **kw: Any
) -> ParityReport:
    run = session_runner(ort_session(path))
    report = classifier_parity(torch_runner(reference, spec), run, spec, data.val, data.val_labels, **kw)
    report.metrics["data"] = data.source
    return report


def _build_int8(
    ctx: ExportContext, entry: Entry, spec: GraphSpec, reference: Any, fp32: Path, data: ImageData
) -> Built:
    path = quantize.to_int8(fp32, fp32.parent.parent / "int8" / "model.onnx", data.train[:CALIBRATION_IMAGES])
    report = _check(ctx, spec, reference, path, data, atol=float("inf"), min_agreement=0.0)
    # values unbounded: only a malformed output (a name, shape or dtype, NaN or inf) errs
    gate: quantize.GateResult | quantize.AgreementGate | quantize.MalformedGraph
    gate = quantize.MalformedGraph(tuple(report.errors))
    if gate.passed:
        gate = _int8_gate(ctx, fp32, path, data)
        if ctx.accuracy_hook is not None:
            gate = ctx.accuracy_hook(gate)
    report.metrics["int8_gate"] = gate.as_dict()
    return Built(entry.name, entry.precision, path, "onnxruntime_onnx", report, gate)


def _int8_gate(
    ctx: ExportContext, fp32: Path, int8: Path, data: ImageData
) -> quantize.GateResult | quantize.AgreementGate:
    """The top-1 accuracy drop on the validation labels; without labels (random images), top-1
    agreement with fp32, as 0 % vs 0 % accuracy would measure nothing and always pass."""
    from export.parity import predict

    preds32 = predict(session_runner(ort_session(fp32)), data.val)
    preds8 = predict(session_runner(ort_session(int8)), data.val)
    if data.val_labels is None:
        agreement = float((preds32 == preds8).mean()) if len(preds32) else 0.0
        return quantize.AgreementGate(agreement, len(preds32), ctx.options.int8_max_drop, data.source)
    acc32, acc8 = (float((p == data.val_labels).mean()) for p in (preds32, preds8))
    return quantize.GateResult(acc32, acc8, ctx.options.int8_max_drop)


def _want(wanted: set[str], entry: Entry) -> bool:
    return entry.name in wanted or _trt(entry).name in wanted


def build_candidates(
    ctx: ExportContext, work: Path, wanted: set[str]
) -> tuple[GraphSpec, list[Built], FreezeReport]:
    """Freeze, export fp32 and derive the requested precisions; fp32/fp16 parity failures raise, an
    int8 graph with a malformed output is refused as its gate refuses."""
    ctx.step("freeze")
    spec, reference, fp32, freeze_report = _freeze_and_export(ctx, work)
    data = ctx.validation if ctx.validation is not None else load_image_data(ctx.ckpt, spec)
    ctx.step("parity fp32")
    report = _check(ctx, spec, reference, fp32, data)
    report.raise_if_failed(f"{ctx.name} (fp32 ONNX vs PyTorch)")
    built = [Built(ctx.name, "fp32", fp32, "onnxruntime_onnx", report)]
    entries = _entries(ctx)
    if "fp16" in entries and _want(wanted, entries["fp16"]):
        ctx.step("fp16")
        path = quantize.to_fp16(fp32, work / "fp16" / "model.onnx")
        rep = _check(ctx, spec, reference, path, data, atol=FP16_ATOL, min_agreement=FP16_MIN_AGREEMENT)
        rep.raise_if_failed(f"{entries['fp16'].name} (fp16 ONNX vs PyTorch)")
        built.append(Built(entries["fp16"].name, "fp16", path, "onnxruntime_onnx", rep))
    if "int8" in entries and _want(wanted, entries["int8"]):
        ctx.step("int8")
        built.append(_build_int8(ctx, entries["int8"], spec, reference, fp32, data))
    return spec, built, freeze_report


def _trt_candidates(
    ctx: ExportContext, spec: GraphSpec, built: list[Built], work: Path, wanted: set[str]
) -> list[Built]:
    out = []
    for b in built:
        if f"{b.entry}_trt" not in wanted or (b.gate is not None and not b.gate.passed):
            continue
        if b.precision not in tensorrt.ENGINE_PRECISIONS:
            continue  # refused by _no_engine
        ctx.step(f"TensorRT {b.precision}")
        plan = tensorrt.build_engine(
            b.model_file,
            work / f"trt_{b.precision}" / "model.plan",
            spec,
            precision=b.precision,
            timing_cache=ctx.repository / ".kiln_trt_timing.cache",
        )
        report = ParityReport(
            tolerance=spec.atol, metrics={"note": "engine built from the checked ONNX graph"}
        )
        out.append(Built(f"{b.entry}_trt", b.precision, plan, "tensorrt_plan", report))
    return out


def _metadata(ctx: ExportContext, spec: GraphSpec, b: Built, freeze_report: FreezeReport) -> dict[str, Any]:
    prep = dict(ctx.ckpt["preprocessing"])
    prep.update(layout="NHWC", dtype="uint8", scale=prep.get("scale", 1.0 / 255.0))
    return {
        "task": "classify",
        "model": ctx.ckpt["model"],
        "source_checkpoint": ctx.source,
        "precision": b.precision,
        "platform": b.platform,
        "inputs": [{"name": t.name, "datatype": t.datatype, "dims": t.dims} for t in spec.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "dims": t.dims} for t in spec.outputs],
        "roles": spec.roles,
        "preprocessing": prep,
        "labels": "labels.txt",
        "max_batch_size": spec.max_batch_size,
        "parity": {**b.report.as_dict(), "freeze": freeze_report.as_dict()},
        "export": ctx.settings(b.precision, engine=b.platform == "tensorrt_plan"),
    }


def entry_config(ctx: ExportContext, spec: GraphSpec, b: Built, labels: str = "") -> TritonModelConfig:
    """The Triton config of one built entry: the GPU flavour for an ONNX entry of a GPU export."""
    kind = "KIND_GPU" if b.platform == "tensorrt_plan" else "KIND_CPU"
    config = config_from_spec(spec, name=b.entry, platform=b.platform, instance_kind=kind, labels=labels)
    if ctx.options.device == "gpu" and b.platform == "onnxruntime_onnx":
        options = ctx.options
        config = gpu_flavour(
            config,
            precision=b.precision,
            cudnn_conv_algo_search=options.cudnn_conv_algo_search,
            cuda_graphs=options.cuda_graphs,
        )
    return config


def write_built(ctx: ExportContext, spec: GraphSpec, b: Built, freeze_report: FreezeReport) -> Path:
    """Stage and swap in one entry: model file, config.pbtxt, labels.txt, kiln.json."""
    labels = ctx.labels(spec.outputs[0].shape[-1])

    def fill(tmp: Path) -> dict[str, Any]:
        copy = copy_graph if b.model_file.suffix == ".onnx" else shutil.copyfile  # an engine: one file
        copy(b.model_file, repository.version_dir(tmp) / b.model_file.name)
        config = entry_config(ctx, spec, b, repository.write_labels(tmp, labels))
        (tmp / "config.pbtxt").write_text(to_pbtxt(config), encoding="utf-8")
        return _metadata(ctx, spec, b, freeze_report)

    return repository.write_entry(ctx.repository, b.entry, fill)


def export_classifier(ctx: ExportContext, work: Path) -> list[EntryResult]:
    """Every requested entry of one classifier checkpoint; up-to-date entries are skipped."""
    entries = list(_entries(ctx).values())
    build_trt, trt_reason = tensorrt.should_build(ctx.options.tensorrt)
    candidates = entries + ([_trt(e) for e in entries] if build_trt else [])
    wanted = {e.name for e in candidates if ctx.needs_rebuild(e)}
    results = [ctx.skipped(e) for e in candidates if e.name not in wanted]
    if not wanted:
        return results + (
            [] if build_trt else [EntryResult(f"{ctx.name}_trt", "-", "skipped", message=trt_reason)]
        )
    spec, built, freeze_report = build_candidates(ctx, work, wanted)
    if build_trt:
        results += _no_engine(ctx, spec, built, wanted)
        built += _trt_candidates(ctx, spec, built, work, wanted)
    for b in built:
        if b.gate is not None and not b.gate.passed:
            results += _refuse(ctx, b, wanted)
        elif b.entry in wanted:
            results.append(_write(ctx, spec, b, freeze_report))
    if not build_trt:
        results.append(EntryResult(f"{ctx.name}_trt", "-", "skipped", message=trt_reason))
    return results


def _no_engine(
    ctx: ExportContext, spec: GraphSpec, built: list[Built], wanted: set[str]
) -> list[EntryResult]:
    """The TensorRT twins of entries whose graph TensorRT cannot build (int8: ``tensorrt.ENGINE_PRECISIONS``),
    refused with the reason: building one failed the whole export, and a stale one is removed."""
    report = ParityReport(tolerance=spec.atol, metrics={"note": "no engine built"})
    return [
        ctx.refuse(_trt(Entry(b.entry, b.precision)), report, tensorrt.NO_INT8_ENGINE)
        for b in built
        if b.precision not in tensorrt.ENGINE_PRECISIONS
        and f"{b.entry}_trt" in wanted
        and (b.gate is None or b.gate.passed)
    ]


def _refuse(ctx: ExportContext, b: Built, wanted: set[str]) -> list[EntryResult]:
    """A candidate its gate refused, and its TensorRT twin: stale entries removed and the refusal
    remembered, so the next export of the unchanged checkpoint does not re-gate (as translators)."""
    entries = [Entry(b.entry, b.precision), _trt(Entry(b.entry, b.precision))]
    return [ctx.refuse(e, b.report, b.gate.reason()) for e in entries if e.name in wanted]


def _write(ctx: ExportContext, spec: GraphSpec, b: Built, freeze_report: FreezeReport) -> EntryResult:
    result = EntryResult.from_report(b.entry, b.precision, b.report)
    if b.platform == "onnxruntime_onnx":  # the export summary's measured batching recommendation
        written = entry_config(ctx, spec, b)
        b.report.metrics["batching"] = batching.measure(
            session_runner(ort_session(b.model_file)),
            spec,
            preferred=written.preferred_batch_sizes,
            delay_us=written.max_queue_delay_us,
        )
        result.message = f"batching: {b.report.metrics['batching']['recommendation']}"
    result.path = write_built(ctx, spec, b, freeze_report)
    result.status = "written"
    return result
