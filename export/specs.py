"""One declarative spec per exported graph (STYLE.md item 5).

A :class:`GraphSpec` names every input and output, its dtype and its axes (named axes are dynamic).
The same spec drives ``torch.onnx.export`` (dynamic shapes), the TensorRT optimization profiles,
``config.pbtxt`` and the ``inputs``/``outputs`` of ``kiln.json``, so they can never disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

OPSET = 18
BATCH = "batch"

# numpy dtype name -> (KServe v2 datatype, Triton config data_type)
DTYPES: dict[str, tuple[str, str]] = {
    "uint8": ("UINT8", "TYPE_UINT8"),
    "int32": ("INT32", "TYPE_INT32"),
    "int64": ("INT64", "TYPE_INT64"),
    "float16": ("FP16", "TYPE_FP16"),
    "float32": ("FP32", "TYPE_FP32"),
    "bool": ("BOOL", "TYPE_BOOL"),
    "object": ("BYTES", "TYPE_STRING"),
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: a name, a numpy dtype name, axes (str = dynamic, int = fixed) and a role."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    role: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(
                f"tensor {self.name!r}: unsupported dtype {self.dtype!r}; known: {sorted(DTYPES)}"
            )

    @property
    def datatype(self) -> str:
        """KServe v2 datatype name (``FP32``, ``UINT8``...)."""
        return DTYPES[self.dtype][0]

    @property
    def triton_type(self) -> str:
        return DTYPES[self.dtype][1]

    @property
    def dims(self) -> list[int]:
        """Dims with every dynamic axis as -1 (batch axis included)."""
        return [d if isinstance(d, int) else -1 for d in self.shape]


@dataclass(frozen=True)
class AxisRange:
    """Sizes a dynamic axis takes: TensorRT's min/opt/max and the sizes parity checks visit."""

    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class GraphSpec:
    """Everything needed to export, check, profile and configure one graph."""

    name: str
    kind: str  # classifier | encoder | decoder
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    axes: dict[str, AxisRange]
    atol: float = 1e-4
    opset: int = OPSET
    max_batch_size: int = 64
    dynamo: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.opset < 17:
            raise ValueError(f"{self.name}: opset {self.opset} < 17")
        names = [t.name for t in (*self.inputs, *self.outputs)]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate tensor names in {names}")
        for t in (*self.inputs, *self.outputs):
            unknown = [a for a in t.shape if isinstance(a, str) and a not in self.axes]
            if unknown:
                raise ValueError(f"{self.name}: tensor {t.name!r} uses undeclared axes {unknown}")

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def roles(self) -> dict[str, str]:
        return {t.name: t.role or t.name for t in (*self.inputs, *self.outputs)}

    def dynamic_shapes(self) -> tuple[dict[int, Any], ...]:
        """``torch.onnx.export(dynamo=True)`` dynamic shapes: one ``torch.export.Dim`` per named axis."""
        dims = {n: torch.export.Dim(n, min=max(r.min, 0), max=max(r.max, 2)) for n, r in self.axes.items()}
        return tuple({i: dims[a] for i, a in enumerate(t.shape) if isinstance(a, str)} for t in self.inputs)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Legacy (TorchScript) exporter dynamic axes by tensor name."""
        return {
            t.name: {i: a for i, a in enumerate(t.shape) if isinstance(a, str)}
            for t in (*self.inputs, *self.outputs)
        }

    def concrete_shape(self, tensor: TensorSpec, sizes: dict[str, int]) -> tuple[int, ...]:
        """The tensor's shape with every named axis replaced by ``sizes[name]``."""
        return tuple(sizes[a] if isinstance(a, str) else a for a in tensor.shape)


def classifier_spec(
    name: str, preprocessing: dict[str, Any], num_classes: int, *, max_batch_size: int = 64
) -> GraphSpec:
    """Raw pixels in (uint8 NHWC), logits and probabilities out; normalisation lives in the graph."""
    height, width = (int(s) for s in preprocessing["input_size"])
    channels = int(preprocessing["channels"])
    return GraphSpec(
        name=name,
        kind="classifier",
        inputs=(TensorSpec("images", "uint8", (BATCH, height, width, channels), "images"),),
        outputs=(
            TensorSpec("logits", "float32", (BATCH, num_classes), "logits"),
            TensorSpec("probabilities", "float32", (BATCH, num_classes), "probabilities"),
        ),
        axes={BATCH: AxisRange(1, max(1, max_batch_size // 2), max_batch_size)},
        max_batch_size=max_batch_size,
    )


def _torch_dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def probe_tensor_specs(
    run: Callable[[dict[str, int]], dict[str, torch.Tensor]],
    names: list[str],
    axes: list[str],
    roles: dict[str, str],
) -> tuple[TensorSpec, ...]:
    """Infer which axes of each named tensor are dynamic by running ``run`` at two sets of axis sizes.

    ``run(sizes)`` returns tensors by name; an axis whose length follows ``sizes[axis]`` is named after
    it. Generic: no knowledge of the model is needed, only its step interface.
    """
    base = {a: 2 + 3 * i for i, a in enumerate(axes)}  # distinct sizes so axes cannot be confused
    first = run(base)
    changed = [run({**base, a: base[a] + 2}) for a in axes]
    specs = []
    for name in names:
        shape: list[int | str] = list(first[name].shape)
        for a, out in zip(axes, changed, strict=True):
            for i, (s0, s1) in enumerate(zip(first[name].shape, out[name].shape, strict=True)):
                if s0 != s1:
                    shape[i] = a
        specs.append(TensorSpec(name, _torch_dtype_name(first[name]), tuple(shape), roles.get(name, name)))
    return tuple(specs)
