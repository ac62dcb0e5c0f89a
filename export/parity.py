"""PyTorch vs ONNX Runtime parity, in the style of optimum's ``_run_validation`` (STYLE.md item 6).

For every check: the output names must match the spec, then the shapes and dtypes, then the values of
each value within the spec's tolerance (absolute, times the larger of its own magnitude and the
output's, short of a mask value's, when that exceeds 1;
NaN or inf where PyTorch's value is finite, and NaN in PyTorch's own output, fail at any tolerance);
the max abs diff of every output is recorded so a failure names the output, the inputs' sizes and the
difference.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from export.specs import GraphSpec

log = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]
KILN_DOMAIN = "kiln.ai"  # the fused attention operators (serving/decoding/attention.c)


class ParityError(AssertionError):
    """The exported graph does not reproduce PyTorch; the message names the output and the difference."""


@dataclass
class ParityReport:
    """Per-output max abs diff over all checks, the checks themselves and the agreement figures."""

    tolerance: float
    outputs: dict[str, float] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.errors

    def record(self, sizes: dict[str, int], diffs: dict[str, float], errors: list[str]) -> None:
        self.checks.append({"sizes": sizes, "max_abs_diff": diffs})
        for name, diff in diffs.items():
            self.outputs[name] = max(self.outputs.get(name, 0.0), diff)
        self.errors.extend(f"{e} (at {sizes})" for e in errors)

    def fail(self, message: str) -> None:
        self.errors.append(message)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            # None = no value tolerance (int8 is gated on accuracy instead); JSON has no Infinity
            "tolerance": self.tolerance if math.isfinite(self.tolerance) else None,
            "outputs": {n: {"max_abs_diff": d} for n, d in self.outputs.items()},
            **self.metrics,
            "checks": self.checks,
            "errors": self.errors,
        }

    def raise_if_failed(self, what: str) -> None:
        if not self.passed:
            raise ParityError(f"{what}: parity failed: " + "; ".join(self.errors))


def ort_session(path: Path | str, threads: int = 2) -> Any:
    """A CPU ONNX Runtime session on ``path`` (imported lazily)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if uses_kiln_operators(path):  # a fused-attention step graph: its operators are compiled
        from serving.decoding import native

        if not native.register_kernels(options):
            raise RuntimeError(f"{path} needs Kiln's compiled attention operators, which could not be built")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def uses_kiln_operators(path: Path | str) -> bool:
    """Whether the graph at ``path`` imports the ``kiln.ai`` operator domain."""
    model = onnx.load(str(path), load_external_data=False)
    return any(o.domain == KILN_DOMAIN for o in model.opset_import)


def session_runner(session: Any) -> Callable[[Feeds], Feeds]:
    """Run a session on named feeds; inputs the exporter pruned as unused are not fed."""
    names = [o.name for o in session.get_outputs()]
    inputs = [i.name for i in session.get_inputs()]

    def run(feeds: Feeds) -> Feeds:
        return dict(zip(names, session.run(names, {n: feeds[n] for n in inputs}), strict=True))

    return run


@torch.no_grad()
def torch_runner(module: nn.Module, spec: GraphSpec) -> Callable[[Feeds], Feeds]:
    """Run a graph wrapper on numpy feeds in spec order, returning numpy outputs by name."""

    def run(feeds: Feeds) -> Feeds:
        with torch.no_grad():
            out = module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in spec.input_names))
        out = out if isinstance(out, (tuple, list)) else (out,)
        return {n: t.detach().cpu().numpy() for n, t in zip(spec.output_names, out, strict=True)}

    return run


def compare_outputs(
    spec: GraphSpec, expected: Feeds, actual: Feeds, atol: float
) -> tuple[dict[str, float], list[str]]:
    """Names, then shapes and dtypes, then values per output; returns (max abs diff by output, error
    messages). NaN or inf where PyTorch's value is finite fails at any tolerance, an unbounded one
    (int8) included: no precision trade-off explains it, and config.pbtxt promises the spec's dtype.
    So does a NaN in PyTorch's own output, named as such: nothing can be compared with it (an unbounded
    tolerance passed any candidate, and a bounded one blamed the export for an infinite difference)."""
    missing = sorted(set(spec.output_names) - set(actual))
    if missing:
        return {}, [f"{spec.name}: outputs missing from the ONNX graph: {missing}"]
    diffs, errors = {}, []
    for tensor in spec.outputs:
        name = tensor.name
        ref, got = np.asarray(expected[name]), np.asarray(actual[name])
        if ref.shape != got.shape:
            errors.append(f"{spec.name}.{name}: shape {got.shape} != PyTorch {ref.shape}")
            continue
        if got.dtype != np.dtype(tensor.dtype):
            errors.append(f"{spec.name}.{name}: dtype {got.dtype} != spec {tensor.dtype}")
        if ref.dtype == bool or got.dtype == bool:
            diff = float(np.count_nonzero(ref != got))
        else:
            both_inf = np.isinf(ref) & np.isinf(got) & (np.sign(ref) == np.sign(got))
            with np.errstate(invalid="ignore"):  # inf - inf, masked by both_inf
                delta = np.where(both_inf, 0.0, np.abs(ref.astype(np.float64) - got.astype(np.float64)))
            diff = float(np.nan_to_num(delta, nan=np.inf).max()) if delta.size else 0.0
        diffs[name] = diff
        bound = atol * max(1.0, _scale(ref))
        if ref.dtype != bool and got.dtype != bool and delta.size:  # each value within its own bound
            diff, bound = _worst_excess(ref, delta, atol)
        broken = _new_non_finite(ref, got)
        nan_ref = int(np.count_nonzero(np.isnan(ref))) if ref.dtype.kind == "f" else 0
        if nan_ref:
            errors.append(
                f"{spec.name}.{name}: PyTorch's own output holds {nan_ref} NaN values (the model "
                "overflows on these inputs): nothing to compare with"
            )
        elif broken:
            errors.append(f"{spec.name}.{name}: {broken} NaN/inf values where PyTorch's are finite")
        elif not diff <= bound:
            what = "max abs diff" if diff == diffs[name] else "abs diff"  # not the max: a mask's is
            errors.append(f"{spec.name}.{name}: {what} {diff:.3g} > tolerance {bound:.3g}")
    return diffs, errors


def _worst_excess(ref: np.ndarray, delta: np.ndarray, atol: float) -> tuple[float, float]:
    """(abs diff, tolerance) of the value furthest past its tolerance, or of the largest diff when none
    is: each value's tolerance is ``atol`` times the largest of 1, its own finite magnitude and the
    output's scale (:func:`_scale`), so a mask value (``finfo.min``, ``-1e9``) in a log-prob row bounds
    itself, not the row's real values (its magnitude once let a flipped argmax pass at 1e-4)."""
    own = np.abs(np.where(np.isfinite(ref), ref, 0.0).astype(np.float64)) if ref.dtype.kind == "f" else 0.0
    bounds = atol * np.maximum(max(1.0, _scale(ref)), own)
    delta = np.nan_to_num(delta, nan=np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 (atol 0, no diff), inf / inf (int8)
        ratio = np.nan_to_num(delta / bounds, nan=0.0, posinf=np.inf)
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    if not np.any(ratio > 1.0):  # within every bound: report the largest diff as before
        worst = np.unravel_index(int(np.argmax(delta)), delta.shape)
    return float(delta[worst]), float(np.broadcast_to(bounds, delta.shape)[worst])


def _new_non_finite(ref: np.ndarray, got: np.ndarray) -> int:
    """How many of ``got``'s values are NaN or inf where ``ref``'s are finite (0 for non-float outputs)."""
    if got.dtype.kind != "f" or ref.dtype.kind not in "fiub":
        return 0
    return int(np.count_nonzero(np.isfinite(ref) & ~np.isfinite(got)))


# From this magnitude down a negative value is a mask (``masked_fill(..., finfo.min)``, ``-1e9``), not one
# computed; a positive one is a real value (an unnormalised logit), whose magnitude its output's values share
MASK_MAGNITUDE = 1e6


def _scale(ref: np.ndarray) -> float:
    """Largest finite magnitude below a mask's: the tolerance is absolute up to 1 and relative above
    (float32 rounding); a mask value's magnitude would lend every value of the output its slack."""
    finite = ref[np.isfinite(ref)] if ref.size and ref.dtype.kind == "f" else np.zeros(0)
    finite = np.abs(finite[finite > -MASK_MAGNITUDE])
    return float(finite.max()) if finite.size else 0.0


def check_feeds(
    spec: GraphSpec,
    reference: Callable[[Feeds], Feeds],
    candidate: Callable[[Feeds], Feeds],
    cases: Iterable[tuple[dict[str, int], Feeds]],
    report: ParityReport,
    atol: float | None = None,
) -> ParityReport:
    """Compare ``candidate`` with ``reference`` on each (sizes, feeds) case, recording into ``report``."""
    for sizes, feeds in cases:
        diffs, errors = compare_outputs(
            spec, reference(feeds), candidate(feeds), spec.atol if atol is None else atol
        )
        report.record(sizes, diffs, errors)
    return report


def random_images(spec: GraphSpec, batch: int, seed: int) -> Feeds:
    """Random uint8 pixels for the classifier's ``images`` input at ``batch``."""
    rng = np.random.default_rng(seed)
    tensor = spec.inputs[0]
    shape = spec.concrete_shape(tensor, {"batch": batch})
    return {tensor.name: rng.integers(0, 256, size=shape, dtype=np.uint8)}


def predict(run: Callable[[Feeds], Feeds], images: np.ndarray, batch: int = 64) -> np.ndarray:
    """Top-1 class of every image (NHWC uint8), in batches."""
    preds = [
        run({"images": images[i : i + batch]})["logits"].argmax(-1) for i in range(0, len(images), batch)
    ]
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def classifier_parity(
    reference: Callable[[Feeds], Feeds],
    candidate: Callable[[Feeds], Feeds],
    spec: GraphSpec,
    images: np.ndarray,
    labels: np.ndarray | None,
    *,
    batch_sizes: tuple[int, ...] = (1, 7, 64),
    atol: float | None = None,
    min_agreement: float = 1.0,
) -> ParityReport:
    """Random-pixel checks at each batch size, then top-1 agreement (and accuracy) on ``images``."""
    report = ParityReport(tolerance=spec.atol if atol is None else atol)
    cases = [({"batch": b}, random_images(spec, b, seed=b)) for b in batch_sizes]
    check_feeds(spec, reference, candidate, cases, report, atol)
    if len(images):
        ref, got = predict(reference, images), predict(candidate, images)
        agreement = float((ref == got).mean())
        report.metrics["top1_agreement"] = agreement
        report.metrics["validation_images"] = len(images)
        if labels is not None:
            report.metrics["accuracy_reference"] = float((ref == labels).mean())
            report.metrics["accuracy"] = float((got == labels).mean())
        if agreement < min_agreement:
            report.fail(f"{spec.name}: top-1 agreement {agreement:.4f} < required {min_agreement:.4f}")
    return report
