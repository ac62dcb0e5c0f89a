"""Repository entries of a translator: ``<name>_encoder``, ``<name>_decoder`` and the ``<name>`` python entry."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from export import repository
from export.parity import ParityReport
from export.results import EntryResult, ExportContext
from export.specs import GraphSpec
from export.triton_config import TritonModelConfig, TritonTensor, config_from_spec, preferred_sizes, to_pbtxt

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "serving" / "triton" / "translator_model.py"
RUNTIME_MODULES = ("beam_search.py", "stepper.py")


def _tensors(spec: GraphSpec) -> dict[str, list[dict[str, Any]]]:
    return {
        "inputs": [{"name": t.name, "datatype": t.datatype, "dims": t.dims} for t in spec.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "dims": t.dims} for t in spec.outputs],
    }


def _common(ctx: ExportContext, step_spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": ctx.ckpt["model"],
        "source_checkpoint": ctx.source,
        "precision": "fp32",
        "step_spec": step_spec,
    }


def _write_graph(
    ctx: ExportContext, spec: GraphSpec, onnx_path: Path, task: str, meta: dict[str, Any]
) -> Path:
    """An ONNX entry; Triton's dynamic batcher is off: shapes differ per call, the gateway batches steps."""

    def fill(tmp: Path) -> dict[str, Any]:
        shutil.copyfile(onnx_path, repository.version_dir(tmp) / "model.onnx")
        base = config_from_spec(spec)
        config = dataclasses.replace(base, dynamic_batching=False, warmup=False)
        (tmp / "config.pbtxt").write_text(to_pbtxt(config))
        return {"task": task, **meta, **_tensors(spec), "roles": spec.roles, "max_batch_size": spec.max_batch_size,
                "platform": "onnxruntime_onnx"}  # fmt: skip

    return repository.write_entry(ctx.repository, spec.name, fill)


def python_entry_config(name: str, max_batch_size: int, encoder: str, decoder: str) -> TritonModelConfig:
    """``text`` in, ``translation`` out (TYPE_STRING, dims [1]), python backend, dynamically batched."""
    return TritonModelConfig(
        name=name,
        platform="python",
        max_batch_size=max_batch_size,
        inputs=(TritonTensor("text", "TYPE_STRING", (1,)),),
        outputs=(TritonTensor("translation", "TYPE_STRING", (1,)),),
        preferred_batch_sizes=preferred_sizes(max_batch_size),
        warmup=False,
        parameters={"encoder": encoder, "decoder": decoder},
    )


def _copy_runtime(version: Path) -> str:
    """model.py and the beam search modules from serving/, when the template exists."""
    if not TEMPLATE.is_file():
        return f"missing: {TEMPLATE.relative_to(ROOT)} did not exist at export time; entry has no model.py"
    shutil.copyfile(TEMPLATE, version / "model.py")
    package = version / "serving" / "decoding"
    package.mkdir(parents=True)
    for level in (package.parent, package):
        (level / "__init__.py").write_text("")
    for module in RUNTIME_MODULES:
        shutil.copyfile(ROOT / "serving" / "decoding" / module, package / module)
    return "model.py"


def _write_python(ctx: ExportContext, g: dict[str, Any], step_spec: dict, reports: dict) -> Path:
    enc, dec = g["enc"].name, g["dec"].name
    tokenizers = ctx.ckpt["tokenizers"]

    def fill(tmp: Path) -> dict[str, Any]:
        (tmp / "source_tokenizer.json").write_text(tokenizers["source"])
        (tmp / "target_tokenizer.json").write_text(tokenizers["target"])
        model_py = _copy_runtime(repository.version_dir(tmp))
        config = python_entry_config(ctx.name, ctx.options.max_batch_size, enc, dec)
        (tmp / "config.pbtxt").write_text(to_pbtxt(config))
        return {
            "task": "translate", **_common(ctx, step_spec), "platform": "python",
            "inputs": [{"name": "text", "datatype": "BYTES", "dims": [-1, 1]}],
            "outputs": [{"name": "translation", "datatype": "BYTES", "dims": [-1, 1]}],
            "roles": {"text": "text", "translation": "translation"}, "max_batch_size": ctx.options.max_batch_size,
            "model_py": model_py,
            "translator": {"encoder": enc, "decoder": dec, "source_tokenizer": "source_tokenizer.json",
                           "target_tokenizer": "target_tokenizer.json", "step_spec": step_spec},
            "parity": {**reports["beam"].as_dict(), "freeze": g["freeze"].as_dict()},
            "export": ctx.settings("fp32"),
        }  # fmt: skip

    return repository.write_entry(ctx.repository, ctx.name, fill)


def write_translator_entries(ctx: ExportContext, g: dict[str, Any], reports: dict[str, ParityReport]) -> list:
    """Write the three entries; parity reports go to each entry's kiln.json and to the results."""
    step_spec = {k: v for k, v in g["spec"].items() if k != "vocab_size_src"}
    results = []
    for key, task in (("enc", "translate_encoder"), ("dec", "translate_decoder")):
        report = reports["encoder" if key == "enc" else "decoder"]
        meta = {**_common(ctx, step_spec), "parity": report.as_dict(), "export": ctx.settings("fp32")}
        path = _write_graph(ctx, g[key], g[f"{key}_path"], task, meta)
        result = EntryResult.from_report(g[key].name, "fp32", report)
        result.status, result.path = "written", path
        results.append(result)
    result = EntryResult.from_report(ctx.name, "fp32", reports["beam"])
    result.status, result.path = "written", _write_python(ctx, g, step_spec, reports)
    return results + [result]
