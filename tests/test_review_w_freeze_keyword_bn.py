"""A BatchNorm called by keyword (``self.bn(input=x)``, BatchNorm's own argument name) is never folded
(torch.fx sees no positional input to pair with its Conv), so freezing turns it into a ChannelAffine:
that stand-in must take the call as BatchNorm did (it raised "unexpected keyword argument 'input'")."""

from __future__ import annotations

import torch
from torch import nn

from export.freeze import ChannelAffine, freeze


class KeywordBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(input=self.conv(x)).mean((2, 3)))


def test_a_batchnorm_called_by_keyword_freezes_to_the_same_outputs():
    torch.manual_seed(0)
    model = KeywordBatchNorm().train()
    model(torch.randn(8, 1, 8, 8))  # running statistics that are not the identity
    frozen, report = freeze(model.eval(), [torch.randn(2, 1, 8, 8)])
    assert report.folded == [] and isinstance(frozen.bn, ChannelAffine)
    assert report.max_abs_diff < 1e-5
