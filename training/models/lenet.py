"""LeNet-5 (LeCun et al., 1998) with optional BatchNorm, adapted to any input size by adaptive pooling."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.models.layers import ClassifierConfig, conv_bn_relu, init_weights, mlp_head, scaled
from training.models.registry import register_model


@dataclass
class LeNetConfig(ClassifierConfig):
    """LeNet knobs; ``batch_norm`` after each conv makes it train reliably at higher learning rates."""

    batch_norm: bool = True
    dropout: float = 0.0
    width_mult: float = 1.0


class LeNet(nn.Module):
    """conv5(6) -> pool -> conv5(16) -> pool -> 5x5 adaptive pool -> fc 120 -> fc 84 -> classes."""

    def __init__(self, config: LeNetConfig) -> None:
        super().__init__()
        self.config = config
        c1, c2 = scaled(6, config.width_mult), scaled(16, config.width_mult)
        self.features = nn.Sequential(
            conv_bn_relu(config.in_channels, c1, 5, padding=2, batch_norm=config.batch_norm),
            nn.MaxPool2d(2),
            conv_bn_relu(c1, c2, 5, padding=0, batch_norm=config.batch_norm),
            nn.MaxPool2d(2),
        )
        # 28x28 inputs arrive here at exactly 5x5 (the classic LeNet-5 layout); others are pooled to it.
        self.pool = nn.AdaptiveAvgPool2d(5)
        hidden = [scaled(120, config.width_mult), scaled(84, config.width_mult)]
        self.classifier = mlp_head(c2 * 25, hidden, config.num_classes, config.dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, C2, H/4 - 2, W/4 - 2)
        x = self.pool(x)  # (B, C2, 5, 5)
        return self.classifier(x)  # (B, num_classes)


@register_model("lenet", task="classify", config=LeNetConfig)
def lenet(config: LeNetConfig) -> LeNet:
    """LeNet-5; the cheapest classifier in the zoo, meant for digits."""
    return LeNet(config)
