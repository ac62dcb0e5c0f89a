"""When a training run has diverged, shared by the classifier and translator trainers: a loss or weights
gone NaN or inf, or an fp16 loss scale driven to nothing, stop the run at once, every rank together,
with ``TrainingDiverged`` saying where, why and what to try, and no checkpoint from those weights."""

from __future__ import annotations

import math

import torch
from torch import nn

# fairseq's floor: an fp16 GradScaler halves its scale (from 2**16) at every overflow, so below this some
# 30 steps in a row overflowed float16 and nothing trains any more; the run stops instead of spinning.
MIN_LOSS_SCALE = 1e-4


class TrainingDiverged(ValueError):
    """The training loss or the weights went NaN or inf: the run stops at once, every rank together,
    and writes no checkpoint from those weights (a checkpoint already on disk is left as it was)."""


def divergence(loss: float, stepped: bool, scaler: torch.amp.GradScaler) -> str | None:
    """Why a training step shows the run has diverged, or None. A NaN or inf loss on a step the optimizer
    took (without fp16 every step is taken) has put NaN or inf into the gradients, and so the weights; a
    step an fp16 GradScaler skipped left the weights as they were, unless skips drove its scale below
    ``MIN_LOSS_SCALE``."""
    if stepped and not math.isfinite(loss):
        return f"the training loss is {loss}"
    if scaler.is_enabled() and scaler.get_scale() < MIN_LOSS_SCALE:
        return (
            f"the fp16 loss scale fell to {scaler.get_scale():.3g} (below {MIN_LOSS_SCALE:g}): the loss or "
            "its gradients overflow float16 at step after step, so nothing trains"
        )
    return None


def non_finite_weights(module: nn.Module) -> list[str]:
    """Names of the module's floating-point weights and buffers that hold NaN or inf."""
    return [
        name
        for name, tensor in module.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def weights_divergence(module: nn.Module) -> str | None:
    """Why the weights cannot be kept (some hold NaN or inf, named), or None: checked before a
    validation can take them as the best."""
    bad = non_finite_weights(module)
    if not bad:
        return None
    named = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
    return f"the weights hold NaN or inf ({named}: {len(bad)} tensors)"


def divergence_advice(lr: float, clip_flag: str, clipped: bool, fp16_flag: str | None) -> str:
    """What to try after a diverged run: a lower learning rate, gradient clipping if off, no fp16; in a
    new run, since ``--resume`` refuses them changed."""
    tips = [f"a lower --lr (this run's: {lr:g})"]
    if not clipped:
        tips.append(f"{clip_flag} 1")
    if fp16_flag:
        tips.append(fp16_flag)
    return "in a new run (--resume keeps these), try " + ", or ".join(tips)
