"""Repository entries of a translator: ``<name>_encoder``, ``<name>_decoder`` and the ``<name>`` python entry,
plus, when int8 passes its gate, ``<name>_encoder_int8``, ``<name>_decoder_int8`` and the ``<name>_int8``
python entry that pairs them (docs/kiln-json.md)."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from export import repository
from export.onnx_export import copy_graph
from export.parity import ParityReport
from export.results import Entry, EntryResult, ExportContext, ExportOptions
from export.specs import DTYPES, GraphSpec
from export.translator_graphs import FusedStep, TranslatorGraphs
from export.triton_config import (
    TritonModelConfig,
    TritonTensor,
    config_from_spec,
    gpu_flavour,
    to_pbtxt,
)
from serving.decoding.native import FUSED_GRAPH
from training.checkpoint import file_sha256
from training.data.tokenizer import with_cleaning

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "serving" / "triton" / "translator_model.py"
RUNTIME_MODULES = (
    "beam_search.py",
    "options.py",
    "compiled_step.py",
    "native.py",
    "beam_step.c",
    "ort_step.c",  # built with beam_step.c into one library: the decoder's compiled steps (in_process)
    "attention.c",  # likewise: the fused step graph's operators
    "native_decoder.py",
    "native_batch.py",
    "rows.py",
    "step_spec.py",
    "stepper.py",
    "offline.py",
)
# serving/execution modules the decoding copies import, and the version_policy rule model.py follows
EXECUTION_MODULES = ("runner.py", "version_policy.py")


def _tensors(spec: GraphSpec) -> dict[str, list[dict[str, Any]]]:
    return {
        "inputs": [{"name": t.name, "datatype": t.datatype, "dims": t.dims} for t in spec.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "dims": t.dims} for t in spec.outputs],
    }


def _common(ctx: ExportContext, step_spec: dict[str, Any], precision: str) -> dict[str, Any]:
    return {
        "model": ctx.ckpt["model"],
        "source_checkpoint": ctx.source,
        "precision": precision,
        "step_spec": step_spec,
        "export": ctx.settings(precision),
    }


def _write_graph(
    ctx: ExportContext,
    spec: GraphSpec,
    onnx_path: Path,
    task: str,
    meta: dict[str, Any],
    fused: Path | None = None,
) -> Path:
    """An ONNX entry; Triton's dynamic batcher is off: shapes differ per call, the gateway batches steps.
    ``fused``: the same graph with fused attention, written beside ``model.onnx`` as
    ``native.FUSED_GRAPH`` (the gateway's decode workers open it where the compiled operators load;
    Triton and everything else open ``model.onnx``)."""

    def fill(tmp: Path) -> dict[str, Any]:
        copy_graph(onnx_path, repository.version_dir(tmp) / "model.onnx")
        if fused is not None:
            copy_graph(fused, repository.version_dir(tmp) / FUSED_GRAPH)
        base = config_from_spec(spec)
        config = dataclasses.replace(base, dynamic_batching=False, warmup=False)
        if ctx.options.device == "gpu":
            config = gpu_flavour(
                config, cudnn_conv_algo_search=ctx.options.cudnn_conv_algo_search, tensorrt=False
            )
        (tmp / "config.pbtxt").write_text(to_pbtxt(config), encoding="utf-8")
        return {
            "task": task,
            **meta,
            **_tensors(spec),
            "roles": spec.roles,
            "max_batch_size": spec.max_batch_size,
            "platform": "onnxruntime_onnx",
        }

    return repository.write_entry(ctx.repository, spec.name, fill)


def python_steps(device: str) -> str:
    """Where the ``<name>`` python entry runs its encoder and decoder: in its own ONNX Runtime sessions
    on CPU (no BLS round trips a step: ~3-7x the BLS path's tokens/s, performance log, thirty-sixth
    session), through BLS to the GPU entries for a GPU export."""
    return "bls" if device == "gpu" else "in_process"


def python_entry_config(
    name: str, max_batch_size: int, encoder: str, decoder: str, steps: str = "in_process"
) -> TritonModelConfig:
    """``text`` in, ``translation`` (TYPE_STRING), ``score`` and ``raw_score`` (TYPE_FP32) out, each ``[n_best]`` a text
    (dims [-1]: the request's ``n_best``), python backend, dynamically batched.
    ``steps``: ``in_process`` (the encoder's and decoder's graphs in the model's own ONNX Runtime
    sessions, the decoder's steps compiled) or ``bls`` (every step a BLS call to those entries: a GPU
    export, so that Triton's GPU entries compute); serving/triton/translator_model.py says more."""
    return TritonModelConfig(
        name=name,
        platform="python",
        max_batch_size=max_batch_size,
        inputs=(TritonTensor("text", "TYPE_STRING", (1,)),),
        outputs=(
            TritonTensor("translation", "TYPE_STRING", (-1,)),
            TritonTensor("score", "TYPE_FP32", (-1,)),
            TritonTensor("raw_score", "TYPE_FP32", (-1,)),
        ),
        # no preferred sizes (Triton's default, DESIGN's batching rule): with them Triton splits what is
        # queued into preferred-size batches (7 texts: 4, then 3 after them), decoded one after another
        warmup=False,
        parameters={"encoder": encoder, "decoder": decoder, "steps": steps},
    )


def _kserve_tensors(config: TritonModelConfig) -> dict[str, list[dict[str, Any]]]:
    """The python entry's inputs and outputs as KServe metadata lists them (batch axis first), for
    kiln.json: derived from its config, so the two say the same (``translation`` and ``score``)."""
    datatype = {triton: kserve for kserve, triton in DTYPES.values()}

    def listed(tensors: tuple[TritonTensor, ...]) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": datatype[t.data_type], "dims": [-1, *t.dims]} for t in tensors]

    return {"inputs": listed(config.inputs), "outputs": listed(config.outputs)}


def _copy_runtime(version: Path) -> str:
    """model.py and the beam search modules from serving/, when the template exists."""
    if not TEMPLATE.is_file():
        return f"missing: {TEMPLATE.relative_to(ROOT)} did not exist at export time; entry has no model.py"
    shutil.copyfile(TEMPLATE, version / "model.py")
    (version / "serving").mkdir()
    (version / "serving" / "__init__.py").write_text("", encoding="utf-8")
    for name, modules in (("decoding", RUNTIME_MODULES), ("execution", EXECUTION_MODULES)):
        package = version / "serving" / name
        package.mkdir()
        (package / "__init__.py").write_text("", encoding="utf-8")
        for module in modules:
            shutil.copyfile(ROOT / "serving" / name / module, package / module)
    return "model.py"


def runtime_sources() -> dict[str, Path]:
    """What :func:`_copy_runtime` copies into a python entry, by its path under the version directory."""
    sources = {"model.py": TEMPLATE}
    for name, modules in (("decoding", RUNTIME_MODULES), ("execution", EXECUTION_MODULES)):
        sources.update({f"serving/{name}/{module}": ROOT / "serving" / name / module for module in modules})
    return sources


def stale_runtime(repository_dir: Path, names: Iterable[str]) -> list[str]:
    """The python entries among ``names`` whose copies of model.py and the beam search modules differ from
    serving/'s now. Triton runs those copies, so a fix there reaches it only through a new export; the
    checkpoint and the export settings alone found such an entry up to date, and Triton answered otherwise
    than the gateway (its special-token text, its cancelled requests) until an export with ``--force``."""
    current = {rel: file_sha256(path) for rel, path in runtime_sources().items() if path.is_file()}
    stale = []
    for name in names:
        meta = repository.read_kiln_json(repository_dir / name)
        if not meta or meta.get("platform") != "python":
            continue
        copied, version = meta.get("artifacts") or {}, meta.get("version", repository.VERSION)
        if any(copied.get(f"{version}/{rel}") != digest for rel, digest in current.items()):
            stale.append(name)
    if stale:
        log.info("%s: written with other copies of model.py and the beam search modules", ", ".join(stale))
    return stale


@dataclasses.dataclass(frozen=True)
class PythonEntry:
    """One ``task == "translate"`` entry: its name, the graph entries it calls and its precision."""

    name: str
    encoder: str
    decoder: str
    precision: str


def _write_python(ctx: ExportContext, entry: PythonEntry, step_spec: dict, parity: dict[str, Any]) -> Path:
    tokenizers = ctx.ckpt["tokenizers"]

    def fill(tmp: Path) -> dict[str, Any]:
        # a checkpoint trained before the tokenizers collapsed whitespace as its corpus cleaning did
        # gets that step here, so the gateway reads a client's raw text as training read its texts
        (tmp / "source_tokenizer.json").write_text(with_cleaning(tokenizers["source"]), encoding="utf-8")
        (tmp / "target_tokenizer.json").write_text(with_cleaning(tokenizers["target"]), encoding="utf-8")
        model_py = _copy_runtime(repository.version_dir(tmp))
        steps = python_steps(ctx.options.device)
        config = python_entry_config(
            entry.name, ctx.options.max_batch_size, entry.encoder, entry.decoder, steps
        )
        (tmp / "config.pbtxt").write_text(to_pbtxt(config), encoding="utf-8")
        translator = {
            "encoder": entry.encoder,
            "decoder": entry.decoder,
            "source_tokenizer": "source_tokenizer.json",
            "target_tokenizer": "target_tokenizer.json",
            "step_spec": step_spec,
        }
        return {
            "task": "translate",
            **_common(ctx, step_spec, entry.precision),
            "platform": "python",
            **_kserve_tensors(config),
            "roles": {"text": "text", "translation": "translation"},
            "max_batch_size": ctx.options.max_batch_size,
            "model_py": model_py,
            "translator": translator,
            "parity": parity,
        }

    return repository.write_entry(ctx.repository, entry.name, fill)


def write_translator_entries(
    ctx: ExportContext,
    g: TranslatorGraphs,
    encoder: ParityReport,
    decoder: ParityReport,
    beam: ParityReport,
    fused: FusedStep | None = None,
    fused_encoder: FusedStep | None = None,
) -> list[EntryResult]:
    """Write the three entries; each parity report goes to its entry's kiln.json and to the results;
    the encoder's and the decoder's ``fused_step`` say whether their fused-attention graph was written
    and with what parity. The three are swapped in together (``repository.written_together``)."""
    with repository.written_together(ctx.repository):
        return _write_translator_entries(ctx, g, encoder, decoder, beam, fused, fused_encoder)


def _write_translator_entries(
    ctx: ExportContext,
    g: TranslatorGraphs,
    encoder: ParityReport,
    decoder: ParityReport,
    beam: ParityReport,
    fused: FusedStep | None,
    fused_encoder: FusedStep | None,
) -> list[EntryResult]:
    step_spec = g.step_spec
    results = []
    graphs = (
        (g.encoder, g.encoder_path, "translate_encoder", encoder, fused_encoder),
        (g.decoder, g.decoder_path, "translate_decoder", decoder, fused),
    )
    for spec, onnx_path, task, report, step in graphs:
        meta = {**_common(ctx, step_spec, "fp32"), "parity": report.as_dict()}
        if step is not None:
            meta["fused_step"] = step.as_dict()
        path = step.path if step is not None else None
        result = EntryResult.from_report(spec.name, "fp32", report)
        result.status, result.path = "written", _write_graph(ctx, spec, onnx_path, task, meta, path)
        results.append(result)
    entry = PythonEntry(ctx.name, g.encoder.name, g.decoder.name, "fp32")
    parity = {**beam.as_dict(), "freeze": g.freeze.as_dict()}
    result = EntryResult.from_report(ctx.name, "fp32", beam)
    result.status, result.path = "written", _write_python(ctx, entry, step_spec, parity)
    return results + [result]


def int8_entry_names(name: str) -> tuple[str, str, str]:
    """(int8 encoder entry, int8 decoder entry, int8 python entry) of translator ``name``."""
    return f"{name}_encoder_int8", f"{name}_decoder_int8", f"{name}_int8"


def translator_entries(name: str, options: ExportOptions) -> list[Entry]:
    """The entries translator ``name`` may write with ``options``: the encoder, the decoder and the
    python entry, and their int8 twins with ``int8`` among the precisions."""
    names = [f"{name}_encoder", f"{name}_decoder", name]
    int8 = int8_entry_names(name) if "int8" in options.precisions else ()
    return [Entry(n, "fp32") for n in names] + [Entry(n, "int8") for n in int8]


def entry_names(name: str, options: ExportOptions) -> tuple[str, ...]:
    """Every entry translator ``name`` may write with ``options`` (``export_translator``)."""
    return tuple(e.name for e in translator_entries(name, options))


@dataclasses.dataclass(frozen=True)
class Int8Graph:
    """A quantized encoder or decoder graph, its parity against PyTorch (recorded, unbounded) and its
    checked fused-attention twin (None where the model has none)."""

    path: Path
    parity: ParityReport
    fused: FusedStep | None = None


def write_int8_entries(
    ctx: ExportContext, g: TranslatorGraphs, encoder: Int8Graph, decoder: Int8Graph, gate: ParityReport
) -> list[EntryResult]:
    """``<name>_encoder_int8`` and ``<name>_decoder_int8`` (the quantized graphs, same tensors as fp32)
    and ``<name>_int8``, a translate entry over them, with their parity reports; swapped in together."""
    with repository.written_together(ctx.repository):
        return _write_int8_entries(ctx, g, encoder, decoder, gate)


def _write_int8_entries(
    ctx: ExportContext, g: TranslatorGraphs, encoder: Int8Graph, decoder: Int8Graph, gate: ParityReport
) -> list[EntryResult]:
    step_spec = g.step_spec
    enc_name, dec_name, name = int8_entry_names(ctx.name)
    results = []
    for base, graph, entry, task in (
        (g.encoder, encoder, enc_name, "translate_encoder"),
        (g.decoder, decoder, dec_name, "translate_decoder"),
    ):
        meta = {**_common(ctx, step_spec, "int8"), "parity": graph.parity.as_dict()}
        if graph.fused is not None:
            meta["fused_step"] = graph.fused.as_dict()
        fused = graph.fused.path if graph.fused is not None else None
        result = EntryResult.from_report(entry, "int8", graph.parity)
        spec = dataclasses.replace(base, name=entry)
        result.status, result.path = "written", _write_graph(ctx, spec, graph.path, task, meta, fused)
        results.append(result)
    entry = PythonEntry(name, enc_name, dec_name, "int8")
    result = EntryResult.from_report(name, "int8", gate)
    result.status, result.path = "written", _write_python(ctx, entry, step_spec, gate.as_dict())
    return results + [result]
