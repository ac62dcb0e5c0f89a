"""AlexNet (Krizhevsky et al., 2012) with optional BatchNorm, for small images as well as ImageNet.

``small_input=True`` (the default) swaps the 11x11 stride-4 stem for a 3x3 stride-1 conv + 2x2 pool, so a
28x28 digit reaches the classifier as a 4x4 map instead of vanishing; the later pools pad so they never
shrink a map below 1x1. Adaptive average pooling to ``pool_size`` makes any input size fit the
classifier. ImageNet layout: ``small_input=False, pool_size=6, hidden=4096, batch_norm=False``, torchvision's
one-tower AlexNet weight for weight, though its padded pools leave 7x7 maps at 224x224 (torchvision's 6x6).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.models.layers import ClassifierConfig, conv_bn_relu, init_weights, mlp_head, scaled
from training.models.registry import register_model


@dataclass
class AlexNetConfig(ClassifierConfig):
    """AlexNet knobs; defaults are a CIFAR-sized AlexNet (BN instead of local response normalisation)."""

    small_input: bool = True
    batch_norm: bool = True
    dropout: float = 0.5
    width_mult: float = 1.0
    pool_size: int = 4
    hidden: int = 1024


# (out_channels, kernel, padding) of conv layers 2..5; "M" is a 3x3 stride-2 max-pool.
_BODY: list[tuple[int, int, int] | str] = [(192, 5, 2), "M", (384, 3, 1), (256, 3, 1), (256, 3, 1), "M"]


def _stem(config: AlexNetConfig, out_channels: int) -> list[nn.Module]:
    """Small: 3x3/1 conv + 2x2 pool (/2). ImageNet: 11x11/4 conv + 3x3/2 pool (/8)."""
    if config.small_input:
        conv = conv_bn_relu(config.in_channels, out_channels, 3, 1, 1, config.batch_norm)
        return [conv, nn.MaxPool2d(2)]
    conv = conv_bn_relu(config.in_channels, out_channels, 11, 4, 2, config.batch_norm)
    return [conv, nn.MaxPool2d(3, 2, padding=1)]


class AlexNet(nn.Module):
    """Five convs (64, 192, 384, 256, 256 channels x width_mult), adaptive pool, 3-layer MLP head."""

    def __init__(self, config: AlexNetConfig) -> None:
        super().__init__()
        self.config = config
        channels = scaled(64, config.width_mult)
        layers = _stem(config, channels)
        for item in _BODY:
            if item == "M":
                layers.append(nn.MaxPool2d(3, 2, padding=1))
                continue
            out, kernel, padding = item
            layers.append(
                conv_bn_relu(channels, scaled(out, config.width_mult), kernel, 1, padding, config.batch_norm)
            )
            channels = scaled(out, config.width_mult)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(config.pool_size)
        in_features = channels * config.pool_size**2
        self.classifier = mlp_head(in_features, [config.hidden] * 2, config.num_classes, config.dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, C, H/8, W/8) small_input, (B, C, ~H/32, ~W/32) ImageNet stem
        x = self.pool(x)  # (B, C, pool_size, pool_size)
        return self.classifier(x)  # (B, num_classes)


@register_model("alexnet", task="classify", config=AlexNetConfig)
def alexnet(config: AlexNetConfig) -> AlexNet:
    """AlexNet; Dropout in the two hidden layers of the classifier, as in the paper."""
    return AlexNet(config)
