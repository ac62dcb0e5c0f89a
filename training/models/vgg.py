"""VGG (Simonyan & Zisserman, 2015) with BatchNorm, built from a table of layer widths like torchvision.

Max-pools use ``ceil_mode`` so the five halvings take 28x28 down to 1x1 instead of to nothing. The default
head is the CIFAR one (global pool, 512-wide hidden layers); ImageNet's is ``pool_size=7, hidden=4096``
(torchvision's ``vgg11``/``vgg16`` with ``batch_norm=False``; with BatchNorm the convs have no bias, so
the count is torchvision's ``vgg*_bn`` less those biases). Dropout comes before each hidden layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.models.layers import ClassifierConfig, conv_bn_relu, init_weights, mlp_head, scaled
from training.models.registry import register_model

# Conv widths per configuration of the paper's Table 1; "M" is a 2x2 stride-2 max-pool.
CFGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ],
}


@dataclass
class VGGConfig(ClassifierConfig):
    """VGG knobs shared by every depth."""

    batch_norm: bool = True
    dropout: float = 0.5
    width_mult: float = 1.0
    pool_size: int = 1
    hidden: int = 512


def make_layers(cfg: list[int | str], in_channels: int, batch_norm: bool, width_mult: float) -> nn.Sequential:
    """The convolutional trunk for one row of :data:`CFGS`: 3x3 conv(-BN)-ReLU layers and max-pools."""
    layers: list[nn.Module] = []
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        else:
            out = scaled(int(item), width_mult)
            layers.append(conv_bn_relu(in_channels, out, 3, 1, 1, batch_norm))
            in_channels = out
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """Table-driven trunk, adaptive pool, MLP head with Dropout before each hidden layer."""

    def __init__(self, config: VGGConfig, cfg: list[int | str]) -> None:
        super().__init__()
        self.config = config
        self.features = make_layers(cfg, config.in_channels, config.batch_norm, config.width_mult)
        channels = scaled(512, config.width_mult)
        self.pool = nn.AdaptiveAvgPool2d(config.pool_size)
        in_features = channels * config.pool_size**2
        self.classifier = mlp_head(in_features, [config.hidden] * 2, config.num_classes, config.dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 512*w, ceil(H/32), ceil(W/32))
        x = self.pool(x)  # (B, 512*w, pool_size, pool_size)
        return self.classifier(x)  # (B, num_classes)


def _vgg(config: VGGConfig, cfg: str) -> VGG:
    return VGG(config, CFGS[cfg])


@register_model("vgg11", task="classify", config=VGGConfig)
def vgg11(config: VGGConfig) -> VGG:
    """VGG-11 (configuration "A") with BatchNorm."""
    return _vgg(config, "A")


@register_model("vgg16", task="classify", config=VGGConfig)
def vgg16(config: VGGConfig) -> VGG:
    """VGG-16 (configuration "D") with BatchNorm."""
    return _vgg(config, "D")
