"""GoogLeNet / Inception v1 (Szegedy et al., 2015) with BatchNorm, from a table of Inception widths.

Auxiliary classifiers (after 4a and 4d) exist only with ``aux_logits=True`` and only contribute in
training: the model then returns ``(logits, [aux1, aux2])``; in eval mode, or after
:meth:`GoogLeNet.remove_auxiliary` (which export's freeze step calls), it returns the logits tensor.
Unlike torchvision (which uses 3x3 there), the "5x5" branch really is 5x5, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.models.layers import ClassifierConfig, conv_bn_relu, init_weights, scaled
from training.models.registry import register_model

# name, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj (the paper's Table 1); "M" is a 3x3/2 max-pool.
INCEPTIONS: list[tuple[str, int, int, int, int, int, int] | str] = [
    ("3a", 64, 96, 128, 16, 32, 32),
    ("3b", 128, 128, 192, 32, 96, 64),
    "M",
    ("4a", 192, 96, 208, 16, 48, 64),
    ("4b", 160, 112, 224, 24, 64, 64),
    ("4c", 128, 128, 256, 24, 64, 64),
    ("4d", 112, 144, 288, 32, 64, 64),
    ("4e", 256, 160, 320, 32, 128, 128),
    "M",
    ("5a", 256, 160, 320, 32, 128, 128),
    ("5b", 384, 192, 384, 48, 128, 128),
]
AUX_AFTER = ("4a", "4d")


@dataclass
class GoogLeNetConfig(ClassifierConfig):
    """GoogLeNet knobs; ``aux_logits`` adds the two training-only auxiliary classifiers."""

    small_input: bool = True
    aux_logits: bool = False
    dropout: float = 0.4
    aux_dropout: float = 0.7
    width_mult: float = 1.0


class Inception(nn.Module):
    """Four parallel branches (1x1; 1x1->3x3; 1x1->5x5; pool->1x1) concatenated on channels."""

    def __init__(self, in_channels: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, proj: int) -> None:
        super().__init__()
        self.branch1 = conv_bn_relu(in_channels, c1, 1)
        self.branch2 = nn.Sequential(conv_bn_relu(in_channels, c3r, 1), conv_bn_relu(c3r, c3, 3))
        self.branch3 = nn.Sequential(conv_bn_relu(in_channels, c5r, 1), conv_bn_relu(c5r, c5, 5))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, padding=1), conv_bn_relu(in_channels, proj, 1))
        self.out_channels = c1 + c3 + c5 + proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]  # (B, Ci, H, W) each
        return torch.cat(branches, 1)  # (B, c1 + c3 + c5 + proj, H, W)


class AuxHead(nn.Module):
    """Auxiliary classifier: 4x4 average pool, 1x1 conv (128), fc 1024 with Dropout, fc to classes."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float, width_mult: float) -> None:
        super().__init__()
        c, hidden = scaled(128, width_mult), scaled(1024, width_mult)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.conv = conv_bn_relu(in_channels, c, 1)
        self.fc1 = nn.Linear(c * 16, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.pool(x)).flatten(1)  # (B, 128w * 16)
        x = self.dropout(self.relu(self.fc1(x)))  # (B, 1024w)
        return self.fc2(x)  # (B, num_classes)


def _stem(config: GoogLeNetConfig, out_channels: int) -> nn.Sequential:
    """Small: one 3x3/1 conv (keeps resolution). ImageNet: 7x7/2, pool, 1x1, 3x3, pool (/8)."""
    if config.small_input:
        return nn.Sequential(conv_bn_relu(config.in_channels, out_channels, 3))
    c64 = scaled(64, config.width_mult)
    return nn.Sequential(
        conv_bn_relu(config.in_channels, c64, 7, 2, 3),
        nn.MaxPool2d(3, 2, padding=1),
        conv_bn_relu(c64, c64, 1),
        conv_bn_relu(c64, out_channels, 3),
        nn.MaxPool2d(3, 2, padding=1),
    )


class GoogLeNet(nn.Module):
    """Stem, nine Inception blocks with two max-pools, global pool, Dropout, linear classifier."""

    def __init__(self, config: GoogLeNetConfig) -> None:
        super().__init__()
        self.config = config
        channels = scaled(192, config.width_mult)
        self.stem = _stem(config, channels)
        self.blocks = nn.ModuleDict()
        aux: dict[str, nn.Module] = {}
        for i, row in enumerate(INCEPTIONS):
            if row == "M":
                self.blocks[f"pool{i}"] = nn.MaxPool2d(3, 2, padding=1)
                continue
            name, *widths = row
            block = Inception(channels, *(scaled(w, config.width_mult) for w in widths))
            self.blocks[name], channels = block, block.out_channels
            if config.aux_logits and name in AUX_AFTER:
                aux[name] = AuxHead(channels, config.num_classes, config.aux_dropout, config.width_mult)
        self.aux: nn.ModuleDict | None = nn.ModuleDict(aux) if aux else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(channels, config.num_classes)
        init_weights(self)

    def remove_auxiliary(self) -> None:
        """Delete the auxiliary heads (training-only) so the module always returns a logits tensor."""
        self.aux = None

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.stem(x)  # (B, 192w, H', W') with H' = H (small_input) or H/8
        aux_logits = []
        for name, block in self.blocks.items():
            x = block(x)  # (B, C_block, H'/s, W'/s)
            if self.training and self.aux is not None and name in self.aux:
                aux_logits.append(self.aux[name](x))  # (B, num_classes)
        x = self.dropout(self.pool(x).flatten(1))  # (B, 1024w)
        logits = self.fc(x)  # (B, num_classes)
        return (logits, aux_logits) if aux_logits else logits


@register_model("googlenet", task="classify", config=GoogLeNetConfig)
def googlenet(config: GoogLeNetConfig) -> GoogLeNet:
    """GoogLeNet (Inception v1)."""
    return GoogLeNet(config)
