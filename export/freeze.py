"""Freeze a trained module into its inference form, as an explicit and checked step (STYLE.md item 8).

Eval mode, auxiliary heads removed, every BatchNorm folded into the Conv/Linear that feeds it (pairs
found generically with torch.fx; the BN must normalize that layer's channel axis on the example
inputs), BatchNorms with no foldable predecessor turned into a per-channel affine, Dropout replaced by
Identity. The frozen module must compute the same outputs (max abs diff reported; tolerance 1e-4
times max(1, largest output magnitude), since float32 rounding of outputs in the hundreds alone
exceeds 1e-4) and hold no BatchNorm or Dropout module.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

log = logging.getLogger(__name__)

FREEZE_ATOL = 1e-4
_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class FreezeError(RuntimeError):
    """Freezing changed the model's outputs or left a training-only module behind."""


class ChannelAffine(nn.Module):
    """``x * scale + shift`` per channel (axis 1): an eval BatchNorm with nothing to fold into."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    @classmethod
    def from_batchnorm(cls, bn: _NormBase) -> ChannelAffine:
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.detach()
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias.detach()
        return cls(scale, shift)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # input: (B, C, *spatial) -> same shape; named as BatchNorm's, which a model may call bn(input=x)
        view = (1, -1) + (1,) * (input.dim() - 2)
        return input * self.scale.view(view) + self.shift.view(view)


@dataclass
class FreezeReport:
    """What freezing did and the proof that it did not change the outputs."""

    folded: list[tuple[str, str]] = field(default_factory=list)  # (conv/linear, batchnorm)
    affine: list[str] = field(default_factory=list)
    dropouts: list[str] = field(default_factory=list)
    aux_removed: bool = False
    max_abs_diff: float = 0.0

    def as_dict(self) -> dict:
        return {
            "folded_batchnorms": len(self.folded),
            "affine_batchnorms": len(self.affine),
            "dropouts_removed": len(self.dropouts),
            "aux_removed": self.aux_removed,
            "max_abs_diff": self.max_abs_diff,
        }


def _set_module(root: nn.Module, qualname: str, new: nn.Module) -> None:
    parent_name, _, child = qualname.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def find_foldable_pairs(model: nn.Module, input_ranks: dict[str, int] | None = None) -> list[tuple[str, str]]:
    """(conv_or_linear, batchnorm) module names where the BN is the only consumer of that layer's output
    and, when ``input_ranks`` (each BatchNorm's input rank, :func:`batchnorm_input_ranks`) is given,
    normalizes that layer's output channels (:func:`_same_channel_axis`)."""
    if not any(isinstance(m, _BatchNorm) for m in model.modules()):
        return []
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 - untraceable models still freeze, with BN as affine
        log.warning(
            "torch.fx could not trace %s (%s); BatchNorms become affine layers", type(model).__name__, exc
        )
        return []
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BatchNorm):
            continue
        prev = node.args[0] if node.args else None
        if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        layer = modules.get(prev.target)
        if not _plain(layer) or calls[prev.target] != 1 or calls[node.target] != 1:
            continue
        if input_ranks is None or _same_channel_axis(layer, input_ranks.get(node.target)):
            pairs.append((prev.target, node.target))
    return pairs


def _plain(layer: nn.Module | None) -> bool:
    """A Conv/Linear whose weight is a plain parameter: one computed from others (``weight_norm``,
    ``spectral_norm``, as a parametrization or as the older forward pre-hook) cannot take a folded
    weight (fusing it raised "attribute 'weight' already exists", a traceback), and a hook would see
    the folded output; its BatchNorm becomes an affine layer instead."""
    return (
        isinstance(layer, _FOLDABLE)
        and not parametrize.is_parametrized(layer)
        and not (layer._forward_pre_hooks or layer._forward_hooks)  # the older weight_norm is a pre-hook
    )


def _same_channel_axis(layer: nn.Module, rank: int | None) -> bool:
    """Whether a BatchNorm whose input has ``rank`` dimensions normalizes the axis ``layer`` writes its
    output channels on: a Linear writes them last, which BatchNorm1d normalizes only on (N, C) inputs
    (on (N, C, L) it normalizes axis 1, and folding into the Linear's rows would scale the wrong axis
    wherever C equals out_features); a ConvNd writes axis 1 of an (N, C, *spatial) batch."""
    if rank is None:  # the BatchNorm never ran on the example inputs: nothing says it is safe to fold
        return False
    if isinstance(layer, nn.Linear):
        return rank == 2
    return rank == len(layer.kernel_size) + 2


def batchnorm_input_ranks(
    model: nn.Module, example_inputs: Sequence[torch.Tensor]
) -> tuple[object, dict[str, int]]:
    """``model(*example_inputs)`` and the rank of each BatchNorm's input in that call, by module name."""
    ranks: dict[str, int] = {}

    def record(name: str, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor):  # a call by keyword leaves it unknown: not folded
            ranks.setdefault(name, args[0].dim())

    hooks = [
        m.register_forward_pre_hook(lambda _m, args, name=name: record(name, args))
        for name, m in model.named_modules()
        if isinstance(m, _BatchNorm)
    ]
    try:
        return model(*example_inputs), ranks
    finally:
        for hook in hooks:
            hook.remove()


def _fold(model: nn.Module, pairs: list[tuple[str, str]]) -> None:
    for layer_name, bn_name in pairs:
        layer, bn = model.get_submodule(layer_name), model.get_submodule(bn_name)
        fuse = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
        _set_module(model, layer_name, fuse(layer, bn))
        _set_module(model, bn_name, nn.Identity())


def _replace_leftovers(model: nn.Module, report: FreezeReport) -> None:
    for name, module in list(model.named_modules()):
        if isinstance(module, _BatchNorm) or _normalizes_by_running_stats(module):
            _set_module(model, name, ChannelAffine.from_batchnorm(module))
            report.affine.append(name)
        elif isinstance(module, (_DropoutNd, nn.AlphaDropout, nn.FeatureAlphaDropout)):
            _set_module(model, name, nn.Identity())
            report.dropouts.append(name)


def _normalizes_by_running_stats(module: nn.Module) -> bool:
    """An InstanceNorm that tracks running statistics: in eval it normalizes by them, a per-channel
    affine as an eval BatchNorm is. Left as it is, torch exports it as a BatchNormalization node, which
    the graph check refuses as training-only, and the export failed calling the model untraceable."""
    return (
        isinstance(module, _InstanceNorm)
        and module.running_mean is not None
        and module.running_var is not None
    )


def training_only_modules(model: nn.Module) -> list[str]:
    """Names of BatchNorm / Dropout modules still present (empty for a frozen model)."""
    kinds = (_BatchNorm, _DropoutNd, nn.AlphaDropout, nn.FeatureAlphaDropout)
    return [name for name, m in model.named_modules() if isinstance(m, kinds)]


def max_abs_diff(a: object, b: object) -> float:
    """Largest absolute difference over tensors, or tuples/lists/dicts of tensors, of the same structure."""
    if isinstance(a, torch.Tensor):
        return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
    if isinstance(a, dict):
        return max((max_abs_diff(a[k], b[k]) for k in a), default=0.0)
    return max((max_abs_diff(x, y) for x, y in zip(a, b, strict=True)), default=0.0)


def output_scale(value: object) -> float:
    """Largest magnitude in a tensor (or nested tensors): tolerances are absolute up to 1, relative above."""
    if isinstance(value, torch.Tensor):
        return float(value.float().abs().max()) if value.numel() and value.is_floating_point() else 0.0
    items = value.values() if isinstance(value, dict) else value
    return max((output_scale(v) for v in items), default=0.0)


def _all_finite(value: object) -> bool:
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    items = value.values() if isinstance(value, dict) else value
    return all(_all_finite(v) for v in items)


def check_finite_weights(model: nn.Module) -> None:
    """Refuse a model holding NaN or inf weights or buffers, naming them: a diverged checkpoint, not a
    freezing fault. Checked on the weights themselves, not through outputs: an embedding row of a token
    the example inputs lack is NaN in no output here, yet in every served answer that holds the token."""
    bad = [n for n, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise FreezeError(
            f"non-finite weights in {bad[:3]}{' ...' if len(bad) > 3 else ''} ({len(bad)} tensors): "
            "the model holds NaN or inf before freezing; was training diverging? export an earlier checkpoint"
        )


def check_finite(outputs: object) -> None:
    """Refuse a model (of finite weights) whose own unfrozen outputs hold NaN or inf: no parity check
    can pass on it."""
    if not _all_finite(outputs):
        raise FreezeError(
            "the model's own outputs hold NaN or inf before freezing (its weights are finite: the "
            "activations overflow); was training diverging? export an earlier checkpoint"
        )


def check_running_stats(model: nn.Module) -> None:
    """Refuse BatchNorms without running statistics (``track_running_stats=False``): torch normalizes
    with each batch's own mean and variance in eval too, so they fold into no constant, and exported as
    they are, a served answer would depend on the other requests batched with it."""
    batch_stats = [
        name
        for name, m in model.named_modules()
        if isinstance(m, _BatchNorm) and (m.running_mean is None or m.running_var is None)
    ]
    if batch_stats:
        raise FreezeError(
            f"BatchNorm without running statistics (track_running_stats=False) in {batch_stats}: in eval "
            "it normalizes by each batch's own statistics, which no exported constant can hold and which "
            "would make an answer depend on the requests batched with it; train it with running "
            "statistics, or use a per-example norm (GroupNorm, LayerNorm) instead"
        )


@torch.no_grad()
def freeze(
    model: nn.Module, example_inputs: Sequence[torch.Tensor], *, atol: float = FREEZE_ATOL
) -> tuple[nn.Module, FreezeReport]:
    """A frozen copy of ``model`` and the report; raises :class:`FreezeError` if the outputs changed."""
    check_finite_weights(model)
    report = FreezeReport()
    reference = copy.deepcopy(model).eval()
    frozen = copy.deepcopy(model).eval()
    for m in (reference, frozen):
        if hasattr(m, "remove_auxiliary"):
            m.remove_auxiliary()
            report.aux_removed = True
    check_running_stats(frozen)
    ref_out, ranks = batchnorm_input_ranks(reference, example_inputs)
    check_finite(ref_out)
    report.folded = find_foldable_pairs(frozen, ranks)
    _fold(frozen, report.folded)
    _replace_leftovers(frozen, report)
    frozen.eval()
    report.max_abs_diff = max_abs_diff(ref_out, frozen(*example_inputs))
    left = training_only_modules(frozen)
    if left:
        raise FreezeError(f"BatchNorm/Dropout modules remain after freezing: {left}")
    bound = atol * max(1.0, output_scale(ref_out))
    if not report.max_abs_diff <= bound:
        raise FreezeError(
            f"freezing changed the outputs: max abs diff {report.max_abs_diff:.3g} > {bound:.3g}"
        )
    log.info("froze %s: %s", type(model).__name__, report.as_dict())
    return frozen, report
