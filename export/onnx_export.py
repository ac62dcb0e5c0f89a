"""Export a frozen module to ONNX from its :class:`GraphSpec`, then check and simplify the graph.

Graph wrappers give every exported graph flat positional inputs/outputs in spec order: the classifier
wrapper takes raw uint8 NHWC pixels and does the normalisation inside the graph; the translator
wrappers expose ``encode`` / ``decode_step`` (docs/translator-interface.md).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from export.specs import GraphSpec

log = logging.getLogger(__name__)

EXTERNAL_DATA_THRESHOLD = 1 << 30  # bytes of weights above which model.onnx keeps a model.onnx.data file
FORBIDDEN_OPS = ("BatchNormalization", "Dropout")


class OnnxExportError(RuntimeError):
    """The exported graph is invalid or still holds training-only nodes."""


class ClassifierGraph(nn.Module):
    """uint8 images [B, H, W, C] -> (logits, probabilities) [B, classes], normalisation inside."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float], scale: float) -> None:
        super().__init__()
        self.model = model
        self.scale = scale
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).to(torch.float32)  # (B, H, W, C) uint8 -> (B, C, H, W) float
        x = (x * self.scale - self.mean) * self.inv_std  # (B, C, H, W) normalised
        logits = self.model(x)  # (B, classes)
        return logits, torch.softmax(logits, dim=-1)


def classifier_graph(model: nn.Module, preprocessing: dict[str, Any]) -> ClassifierGraph:
    """Wrap a frozen classifier with the checkpoint's preprocessing (pixel scale defaults to 1/255)."""
    scale = float(preprocessing.get("scale", 1.0 / 255.0))
    return ClassifierGraph(model, preprocessing["mean"], preprocessing["std"], scale).eval()


class EncoderGraph(nn.Module):
    """``model.encode`` with positional inputs/outputs in step-spec order."""

    def __init__(self, model: nn.Module, outputs: Sequence[str]) -> None:
        super().__init__()
        self.model, self.outputs = model, list(outputs)

    def forward(self, src_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.encode(src_ids)  # src_ids (B, S) -> {name: (B, ...)}
        return tuple(out[name] for name in self.outputs)


class DecoderGraph(nn.Module):
    """``model.decode_step`` with positional inputs/outputs in step-spec order."""

    def __init__(self, model: nn.Module, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        super().__init__()
        self.model, self.inputs, self.outputs = model, list(inputs), list(outputs)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.decode_step(dict(zip(self.inputs, tensors, strict=True)))  # rows first: (R, ...)
        return tuple(out[name] for name in self.outputs)


def _weights_bytes(module: nn.Module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def torch_export(module: nn.Module, spec: GraphSpec, example: Sequence[torch.Tensor], path: Path) -> None:
    """Run ``torch.onnx.export`` as the spec says (dynamo with named dynamic axes, or TorchScript)."""
    external = _weights_bytes(module) > EXTERNAL_DATA_THRESHOLD
    common = dict(input_names=spec.input_names, output_names=spec.output_names, opset_version=spec.opset)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if spec.dynamo:
            shapes = spec.dynamic_shapes()
            params = inspect.signature(module.forward).parameters.values()
            if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
                shapes = (shapes,)  # torch.export sees ``*tensors`` as one argument
            program = torch.onnx.export(
                module, tuple(example), dynamo=True, dynamic_shapes=shapes, verbose=False, **common
            )
            program.save(str(path), external_data=external)
        else:
            torch.onnx.export(
                module, tuple(example), str(path), dynamo=False, dynamic_axes=spec.dynamic_axes(), **common
            )


def check_graph(path: Path) -> onnx.ModelProto:
    """Full ONNX checker (by path, so external data is followed) and no BatchNorm/Dropout node."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise OnnxExportError(f"{path}: ONNX checker failed: {exc}") from exc
    model = onnx.load(str(path), load_external_data=False)
    bad = forbidden_nodes(model)
    if bad:
        raise OnnxExportError(f"{path}: training-only nodes left in the graph: {bad}")
    return model


def forbidden_nodes(model: onnx.ModelProto) -> list[str]:
    """Names/op types of BatchNormalization or Dropout nodes, including inside local functions."""
    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    return [f"{n.op_type}:{n.name}" for n in nodes if n.op_type in FORBIDDEN_OPS]


def simplify(path: Path) -> None:
    """Simplify the graph in place with onnxslim (constant folding, dead code, fusions)."""
    import onnxslim

    external = Path(f"{path}.data").exists()
    model = onnx.load(str(path))
    try:
        slim = onnxslim.slim(model)
    except Exception as exc:  # noqa: BLE001 - an unsimplified but valid graph is still correct
        log.warning("onnxslim failed on %s (%s); keeping the unsimplified graph", path, exc)
        return
    save_model(slim, path, external=external)


def save_model(model: onnx.ModelProto, path: Path, *, external: bool = False) -> None:
    """Save as one file, or with a ``<name>.data`` side file when ``external`` or when the model's
    tensors exceed :data:`EXTERNAL_DATA_THRESHOLD`. The callers that passed nothing (quantization's
    prepared graph, the fp16 graph) wrote a model over protobuf's 2 GiB as one file that onnx saves
    without a word and nothing can parse back ("Unable to parse proto" from the quantizer)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    data = Path(f"{path}.data")
    if data.exists():
        data.unlink()
    external = external or tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD
    onnx.save_model(
        model, str(path), save_as_external_data=external, all_tensors_to_one_file=True, location=data.name
    )


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Serialized bytes of the model's tensors held in memory (initializers, constants, attributes),
    counted tensor by tensor: each is under protobuf's 2 GiB where the whole model may not be."""
    from onnx.external_data_helper import _get_all_tensors

    return sum(t.ByteSize() for t in _get_all_tensors(model))


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return [t for t in _get_all_tensors(model) if uses_external_data(t)]


def copy_graph(src: Path, dst: Path) -> None:
    """Copy the graph ``src`` to ``dst`` with its external data, renamed after ``dst``
    (``<dst name>.data``) and the graph's locations rewritten to match. A copy of the graph alone
    left an entry of a model over :data:`EXTERNAL_DATA_THRESHOLD` without its weights (export passed,
    the gateway and Triton refused it), and the names the exporter gave (``dec.onnx.data`` for both
    the decoder and its fused twin) would have clashed in one version directory."""
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    tensors = _external_tensors(model)
    if not tensors:
        shutil.copyfile(src, dst)
        return
    names = sorted({e.value for t in tensors for e in t.external_data if e.key == "location"})
    renamed = {
        n: f"{dst.name}.data" if len(names) == 1 else f"{dst.name}.{i}.data" for i, n in enumerate(names)
    }
    for name, new in renamed.items():
        shutil.copyfile(src.parent / name, dst.parent / new)
    for entry in (e for t in tensors for e in t.external_data if e.key == "location"):
        entry.value = renamed[entry.value]
    dst.write_bytes(model.SerializeToString())


def specialized_axes(model: onnx.ModelProto, spec: GraphSpec) -> list[str]:
    """Spec axes that the exported graph's inputs or outputs carry as fixed sizes (the exporter
    specialized them): an output's fixed batch axis runs in ONNX Runtime (it only warns), so parity
    passes, but Triton and the gateway refuse to load a batching model that declares one."""
    fixed = []
    tensors = (*spec.inputs, *spec.outputs)
    for value in (*model.graph.input, *model.graph.output):
        tensor = next((t for t in tensors if t.name == value.name), None)
        dims = value.type.tensor_type.shape.dim
        if tensor is None or len(dims) != len(tensor.shape):
            continue
        fixed += [
            f"{value.name}[{i}]={d.dim_value}"
            for i, (a, d) in enumerate(zip(tensor.shape, dims, strict=True))
            if isinstance(a, str) and d.HasField("dim_value")
        ]
    return fixed


def export_onnx(module: nn.Module, spec: GraphSpec, example: Sequence[torch.Tensor], path: Path) -> Path:
    """Export, simplify and check one graph; returns the path of ``model.onnx``.

    When simplification reveals that the dynamo exporter specialized a dynamic axis (e.g. it unrolls
    ``nn.GRU`` over the traced length), the graph is exported again with the TorchScript exporter,
    which emits the ONNX GRU/LSTM ops with a dynamic sequence length.
    """
    path = Path(path)
    _export_and_simplify(module, spec, example, path)
    fixed = specialized_axes(onnx.load(str(path), load_external_data=False), spec)
    if fixed and spec.dynamo:  # every GRU/LSTM graph's path: no warning (its result is checked below)
        log.info(
            "%s: dynamic axes fixed by torch.export %s; using the TorchScript exporter", spec.name, fixed
        )
        try:
            _export_and_simplify(module, dataclasses.replace(spec, dynamo=False), example, path)
        except Exception as exc:  # its own error alone would hide why it ran: name both
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise OnnxExportError(
                f"{spec.name}: dynamic axes became fixed sizes in the graph: {fixed}, and the "
                f"TorchScript exporter tried instead failed: {first}"
            ) from exc
        fixed = specialized_axes(onnx.load(str(path), load_external_data=False), spec)
    if fixed:
        raise OnnxExportError(f"{spec.name}: dynamic axes became fixed sizes in the graph: {fixed}")
    check_graph(path)
    log.info("exported %s (%d bytes)", path, os.path.getsize(path))
    return path


def _export_and_simplify(
    module: nn.Module, spec: GraphSpec, example: Sequence[torch.Tensor], path: Path
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        torch_export(module.eval(), spec, example, raw)
        model = onnx.load(str(raw))  # pulls in any external data the dynamo exporter wrote
        save_model(model, path, external=_weights_bytes(module) > EXTERNAL_DATA_THRESHOLD)
    simplify(path)
