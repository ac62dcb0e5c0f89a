"""DenseNet-BC (Huang et al., 2017): dense blocks of bottleneck layers joined by compressing transitions.

Growth rate, layers per block, bottleneck width and compression are config data, so a digits-sized
DenseNet is ``densenet121`` with e.g. ``growth_rate=12, block_config=[4, 4, 4]``. With
``small_input=False, num_classes=1000`` the parameter count matches torchvision's densenet121.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from training.models.layers import ClassifierConfig, init_weights
from training.models.registry import register_model


@dataclass
class DenseNetConfig(ClassifierConfig):
    """DenseNet knobs; ``block_config`` lists the dense layers per block."""

    growth_rate: int = 32
    block_config: list[int] = field(default_factory=lambda: [6, 12, 24, 16])
    num_init_features: int = 64
    bn_size: int = 4
    compression: float = 0.5
    drop_rate: float = 0.0
    small_input: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        blocks = self.block_config
        ok = isinstance(blocks, (list, tuple)) and len(blocks) > 0
        if not ok or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in blocks):
            raise ValueError(
                f"DenseNetConfig.block_config must be a non-empty list of positive ints, got {blocks!r}"
            )


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bn_size x growth) then BN-ReLU-3x3 conv (growth): the new feature maps."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int, drop_rate: float) -> None:
        super().__init__()
        mid = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, growth_rate, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.relu1(self.norm1(x)))  # (B, bn_size * k, H, W)
        x = self.conv2(self.relu2(self.norm2(x)))  # (B, k, H, W)
        return self.dropout(x)  # (B, k, H, W)


class DenseBlock(nn.Module):
    """Each layer sees the concatenation of the block input and every earlier layer's output."""

    def __init__(
        self, num_layers: int, in_channels: int, growth_rate: int, bn_size: int, drop_rate: float
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size, drop_rate)
            for i in range(num_layers)
        )
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]  # (B, C0, H, W)
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1)))  # (B, k, H, W)
        return torch.cat(features, 1)  # (B, C0 + L * k, H, W)


def _transition(in_channels: int, out_channels: int) -> nn.Sequential:
    """BN-ReLU-1x1 conv compressing the channels, then a 2x2 average pool halving the resolution."""
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.AvgPool2d(2, 2),
    )


def _stem(config: DenseNetConfig) -> nn.Sequential:
    """Small: 3x3/1 conv-BN-ReLU (keeps resolution). ImageNet: 7x7/2 conv-BN-ReLU + 3x3/2 max-pool (/4)."""
    c = config.num_init_features
    if config.small_input:
        return nn.Sequential(
            nn.Conv2d(config.in_channels, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)
        )
    return nn.Sequential(
        nn.Conv2d(config.in_channels, c, 7, 2, 3, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, padding=1),
    )


class DenseNet(nn.Module):
    """Stem, dense blocks with transitions between them, final BN-ReLU, global pool, linear classifier."""

    def __init__(self, config: DenseNetConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = [_stem(config)]
        channels = config.num_init_features
        for i, num_layers in enumerate(config.block_config):
            block = DenseBlock(num_layers, channels, config.growth_rate, config.bn_size, config.drop_rate)
            layers.append(block)
            channels = block.out_channels
            if i != len(config.block_config) - 1:
                out = max(1, int(channels * config.compression))
                layers.append(_transition(channels, out))
                channels = out
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, config.num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, C, H / 2^(blocks-1), W / 2^(blocks-1)), /4 more with the ImageNet stem
        x = self.pool(x).flatten(1)  # (B, C)
        return self.classifier(x)  # (B, num_classes)


def _densenet(config: DenseNetConfig) -> DenseNet:
    return DenseNet(config)


@register_model("densenet121", task="classify", config=DenseNetConfig)
def densenet121(config: DenseNetConfig) -> DenseNet:
    """DenseNet-121: growth 32, blocks [6, 12, 24, 16], 64 initial features (overridable via config)."""
    return _densenet(config)
