"""Freezing folds a BatchNorm into the layer before it only where the BN normalizes that layer's channels."""

from __future__ import annotations

import torch
from torch import nn

from export.freeze import ChannelAffine, freeze


def _nontrivial(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 4 - 2)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 3 + 0.1)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) * 4 - 2)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) * 2 - 1)
    return model.eval()


def test_a_batchnorm1d_over_the_sequence_axis_after_a_linear_is_kept_not_folded_into_its_rows():
    # Linear acts on the last axis of (B, 6, 5); BatchNorm1d(6) normalizes axis 1: same size, other axis
    torch.manual_seed(0)
    model = _nontrivial(nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6)))
    x = torch.randn(4, 6, 5)
    frozen, report = freeze(model, (x,))
    assert report.folded == [] and report.affine == ["1"]
    assert isinstance(frozen[1], ChannelAffine)
    with torch.no_grad():
        other = torch.randn(3, 6, 5) * 3
        torch.testing.assert_close(frozen(other), model(other), rtol=1e-5, atol=1e-5)


def test_a_batchnorm1d_on_a_linears_2d_output_and_a_conv_batchnorm_are_still_folded():
    torch.manual_seed(0)
    linear = _nontrivial(nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6)))
    conv = _nontrivial(nn.Sequential(nn.Conv2d(4, 8, 3, groups=2, bias=False), nn.BatchNorm2d(8)))
    for model, x in ((linear, torch.randn(4, 5)), (conv, torch.randn(2, 4, 8, 8))):
        frozen, report = freeze(model, (x,))
        assert report.folded == [("0", "1")]
        with torch.no_grad():
            other = torch.randn_like(x) * 3
            torch.testing.assert_close(frozen(other), model(other), rtol=1e-5, atol=1e-5)
