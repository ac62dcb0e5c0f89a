"""ResNet (He et al., 2016): basic and bottleneck residual blocks, depths from a table.

``small_input=True`` (the default) uses the CIFAR-style stem, a 3x3 stride-1 conv with no max-pool, so
28x28 / 32x32 images keep their resolution into the first stage; ``small_input=False`` is the ImageNet
stem (7x7 stride-2 conv + 3x3 stride-2 max-pool) and, with ``num_classes=1000``, matches torchvision's
parameter counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.models.layers import ClassifierConfig, init_weights
from training.models.registry import register_model


@dataclass
class ResNetConfig(ClassifierConfig):
    """ResNet knobs; ``width`` is the first stage's channel count (64 in the paper)."""

    width: int = 64
    small_input: bool = True
    zero_init_residual: bool = False


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """1x1 projection shortcut when the block changes resolution or width, else identity (None)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, channels, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # (B, C, H/s, W/s)
        out = self.relu(self.bn1(self.conv1(x)))  # (B, C, H/s, W/s)
        out = self.bn2(self.conv2(out))  # (B, C, H/s, W/s)
        return self.relu(out + identity)  # (B, C, H/s, W/s)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, as in torchvision's "ResNet v1.5"), 1x1 expand x4."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, out_channels, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # (B, 4C, H/s, W/s)
        out = self.relu(self.bn1(self.conv1(x)))  # (B, C, H, W)
        out = self.relu(self.bn2(self.conv2(out)))  # (B, C, H/s, W/s)
        out = self.bn3(self.conv3(out))  # (B, 4C, H/s, W/s)
        return self.relu(out + identity)  # (B, 4C, H/s, W/s)


# depth -> (block type, blocks per stage); stage widths are width * (1, 2, 4, 8).
DEPTHS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}


def _stem(config: ResNetConfig) -> nn.Sequential:
    """CIFAR stem (3x3 stride 1, keeps resolution) or ImageNet stem (7x7 stride 2 + max-pool, /4)."""
    if config.small_input:
        conv = nn.Conv2d(config.in_channels, config.width, 3, 1, padding=1, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(config.width), nn.ReLU(inplace=True))
    conv = nn.Conv2d(config.in_channels, config.width, 7, 2, padding=3, bias=False)
    return nn.Sequential(
        conv, nn.BatchNorm2d(config.width), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, padding=1)
    )


class ResNet(nn.Module):
    """Stem, four residual stages (stride 1, 2, 2, 2), global average pool, linear classifier."""

    def __init__(self, config: ResNetConfig, depth: int) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"unsupported ResNet depth {depth}; known depths: {sorted(DEPTHS)}")
        self.config = config
        block, counts = DEPTHS[depth]
        self.stem = _stem(config)
        stages, in_channels = [], config.width
        for i, count in enumerate(counts):
            channels, stride = config.width * 2**i, 1 if i == 0 else 2
            blocks = []
            for j in range(count):
                blocks.append(block(in_channels, channels, stride if j == 0 else 1))
                in_channels = channels * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, config.num_classes)
        self._init(config.zero_init_residual)

    def _init(self, zero_init_residual: bool) -> None:
        """Standard init; optionally start each residual branch at zero so blocks begin as identities."""
        init_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, W, H', W') with H' = H (small_input) or H/4
        x = self.stages(x)  # (B, 8W*expansion, H'/8, W'/8)
        x = self.pool(x).flatten(1)  # (B, 8W*expansion)
        return self.fc(x)  # (B, num_classes)


def _resnet(config: ResNetConfig, depth: int) -> ResNet:
    return ResNet(config, depth)


@register_model("resnet18", task="classify", config=ResNetConfig)
def resnet18(config: ResNetConfig) -> ResNet:
    """ResNet-18: basic blocks [2, 2, 2, 2]."""
    return _resnet(config, 18)


@register_model("resnet34", task="classify", config=ResNetConfig)
def resnet34(config: ResNetConfig) -> ResNet:
    """ResNet-34: basic blocks [3, 4, 6, 3]."""
    return _resnet(config, 34)


@register_model("resnet50", task="classify", config=ResNetConfig)
def resnet50(config: ResNetConfig) -> ResNet:
    """ResNet-50: bottleneck blocks [3, 4, 6, 3]."""
    return _resnet(config, 50)
