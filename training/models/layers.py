"""Blocks shared by the CNN classifier families: a validated base config, conv-BN-ReLU, heads and init.

Every family config inherits :class:`ClassifierConfig` so ``num_classes`` / ``in_channels`` and the
common knobs are checked once, with messages that name the bad field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ClassifierConfig:
    """Fields every classifier has; subclasses add family knobs (all JSON-able, stored in checkpoints)."""

    num_classes: int = 10
    in_channels: int = 3

    def __post_init__(self) -> None:
        """Refuse nonsense early: positive integer sizes, probabilities in [0, 1), positive multipliers."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _POSITIVE_INTS:
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
                _require(ok, self, f.name, "a positive integer")
            elif f.name in _PROBABILITIES:
                _require(isinstance(value, (int, float)) and 0 <= value < 1, self, f.name, "in [0, 1)")
            elif f.name in _MULTIPLIERS:
                _require(isinstance(value, (int, float)) and 0 < value <= 64, self, f.name, "in (0, 64]")
            elif f.name in _FRACTIONS:
                _require(isinstance(value, (int, float)) and 0 < value <= 1, self, f.name, "in (0, 1]")


# Field names checked by ClassifierConfig.__post_init__ in whichever family config declares them.
_POSITIVE_INTS = {
    "num_classes",
    "in_channels",
    "hidden",
    "pool_size",
    "width",
    "growth_rate",
    "bn_size",
    "num_init_features",
}
_PROBABILITIES = {"dropout", "aux_dropout", "drop_rate"}
_MULTIPLIERS = {"width_mult"}
_FRACTIONS = {"compression"}


def _require(ok: bool, config: object, field: str, what: str) -> None:
    if not ok:
        name = type(config).__name__
        raise ValueError(f"{name}.{field} must be {what}, got {getattr(config, field)!r}")


def scaled(channels: int, width_mult: float) -> int:
    """A channel count times a width multiplier, never below 1 (tiny test models use small multipliers)."""
    return max(1, int(round(channels * width_mult)))


def conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int | None = None,
    batch_norm: bool = True,
) -> nn.Sequential:
    """Conv2d (no bias when BN follows, since BN's shift makes it redundant), BatchNorm2d, ReLU."""
    padding = kernel_size // 2 if padding is None else padding
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=not batch_norm)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def mlp_head(
    in_features: int, hidden: Sequence[int], num_classes: int, dropout: float = 0.0
) -> nn.Sequential:
    """Flattened features -> [Dropout, Linear, ReLU] per hidden size -> Linear to the class logits."""
    layers: list[nn.Module] = [nn.Flatten(1)]
    width = in_features
    for size in hidden:
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def init_weights(model: nn.Module) -> None:
    """Kaiming (fan_out, relu) convs, Xavier linears (narrow MLP heads stay trainable), BN 1/0, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


# Where smallest_input_side stops looking: far above what any classifier's pooling needs.
SIDE_SEARCH_LIMIT = 1024


def takes_input_side(model: nn.Module, in_channels: int, side: int, batch: int = 2) -> bool:
    """Whether a batch of ``batch`` ``side`` x ``side`` images passes through ``model`` in training mode,
    as a run feeds it (auxiliary heads on, BatchNorm over the batch: one image whose feature maps pooled
    to 1x1 gives it one value per channel); shapes only on a meta-device model."""
    device = next(model.parameters()).device
    was_training = model.training
    try:
        with torch.no_grad():
            model.train()(torch.zeros(batch, in_channels, side, side, device=device))
    except (RuntimeError, ValueError):  # a kernel or pool larger than what is left, BN of one value
        return False
    finally:
        model.train(was_training)
    return True


def smallest_input_side(
    model: nn.Module, in_channels: int, limit: int = SIDE_SEARCH_LIMIT, batch: int = 2
) -> int | None:
    """The smallest square side ``model`` takes in batches of ``batch``, by bisection (every side from
    it up passes too, as for each registered classifier: tests/test_cli_leftovers.py), or None where
    none up to ``limit`` does (a failure that is not about size, left for the real run to name)."""
    if not takes_input_side(model, in_channels, limit, batch):
        return None
    low, high = 1, limit
    while low < high:
        middle = (low + high) // 2
        fits = takes_input_side(model, in_channels, middle, batch)
        low, high = (low, middle) if fits else (middle + 1, high)
    return low
