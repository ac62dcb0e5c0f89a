"""Network in Network (Lin et al., 2014): mlpconv blocks (a conv then two 1x1 convs) and global pooling.

The last block produces one channel per class and global average pooling turns it into logits, so there
is no fully connected layer. ``small_input=True`` (default) starts as the paper's CIFAR net (5x5 stride-1
first conv), ``small_input=False`` as the ImageNet one (11x11 stride 4), but neither is the published
network: Kiln's has 192 channels throughout (the paper's CIFAR net: 192-160-96, 192-192-192, 192-192-10,
three blocks in all) or 96-256-384 with a first conv padded by 2, no max-pool after the third block and a
384-wide class-map block (d2l's: padding 0, a max-pool there, straight to the classes), and BatchNorm by
default. README, "Models", lists the differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.models.layers import ClassifierConfig, conv_bn_relu, init_weights, scaled
from training.models.registry import register_model

# (out_channels, kernel, stride, padding) of the first conv of each mlpconv block before the classifier.
BLOCKS: dict[str, list[tuple[int, int, int, int]]] = {
    "small": [(192, 5, 1, 2), (192, 5, 1, 2), (192, 3, 1, 1)],
    "imagenet": [(96, 11, 4, 2), (256, 5, 1, 2), (384, 3, 1, 1)],
}


@dataclass
class NiNConfig(ClassifierConfig):
    """NiN knobs; ``dropout`` follows each pooled block as in the paper."""

    small_input: bool = True
    batch_norm: bool = True
    dropout: float = 0.5
    width_mult: float = 1.0


def mlpconv(
    in_channels: int, out_channels: int, kernel: int, stride: int, padding: int, bn: bool
) -> nn.Sequential:
    """One NiN block: k x k conv, then two 1x1 convs acting as a per-pixel MLP, each with (BN-)ReLU."""
    return nn.Sequential(
        conv_bn_relu(in_channels, out_channels, kernel, stride, padding, bn),
        conv_bn_relu(out_channels, out_channels, 1, 1, 0, bn),
        conv_bn_relu(out_channels, out_channels, 1, 1, 0, bn),
    )


class NiN(nn.Module):
    """Three mlpconv blocks separated by 3x3/2 max-pools + Dropout, then a class-map block + global pool."""

    def __init__(self, config: NiNConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        channels = config.in_channels
        for i, (out, kernel, stride, padding) in enumerate(
            BLOCKS["small" if config.small_input else "imagenet"]
        ):
            if i > 0:
                layers += [nn.MaxPool2d(3, 2, padding=1), nn.Dropout(config.dropout)]
            layers.append(
                mlpconv(channels, scaled(out, config.width_mult), kernel, stride, padding, config.batch_norm)
            )
            channels = scaled(out, config.width_mult)
        self.features = nn.Sequential(*layers, nn.Dropout(config.dropout))
        # The classifier block: 3x3 conv + 1x1 (BN-)ReLU, then a plain 1x1 to class maps (logits, no ReLU).
        self.classifier = nn.Sequential(
            conv_bn_relu(channels, channels, 3, 1, 1, config.batch_norm),
            conv_bn_relu(channels, channels, 1, 1, 0, config.batch_norm),
            nn.Conv2d(channels, config.num_classes, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        init_weights(self)
        # The class-map conv is the classifier (no ReLU follows): Xavier, as the other families' linear
        # heads. Kaiming fan_out would scale its weights by 1/sqrt(num_classes): the first logits' std
        # ~8 for 2 classes (a loss 12x chance's), ~5 for 10, ~0.4 for 1000.
        nn.init.xavier_uniform_(self.classifier[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, C, H/4, W/4) small_input, (B, C, H/16, W/16) ImageNet
        x = self.classifier(x)  # (B, num_classes, H', W')
        return self.pool(x).flatten(1)  # (B, num_classes)


@register_model("nin", task="classify", config=NiNConfig)
def nin(config: NiNConfig) -> NiN:
    """Network in Network."""
    return NiN(config)
