"""The CNN zoo against its references (d2l.ai, the papers, torchvision): what an audit found wrong."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from training.models import build_model


@pytest.mark.parametrize("small_input", [True, False])
@pytest.mark.parametrize("num_classes", [2, 10, 1000])
def test_nin_starts_from_unit_scale_logits_whatever_the_number_of_classes(num_classes, small_input):
    # NiN classifies with a 1x1 conv to class maps: initialised as a Kaiming fan_out conv, its weights
    # scaled as 1/sqrt(num_classes), so a 2-class NiN began with logits of std ~8 (loss 12x chance).
    torch.manual_seed(0)
    model = build_model(
        "nin", num_classes=num_classes, in_channels=1, small_input=small_input, width_mult=0.5
    )
    x, y = torch.randn(16, 1, 32, 32), torch.arange(16) % num_classes
    with torch.no_grad():
        logits = model.train()(x)
    assert 0.1 < logits.std().item() < 2.0
    assert F.cross_entropy(logits, y).item() < 1.5 * torch.log(torch.tensor(float(num_classes))).item() + 0.5


def test_nin_class_map_conv_is_initialised_like_the_other_families_linear_heads():
    # Xavier uniform over a 1x1 conv from 192 channels (the CIFAR layout) to 2 classes: bound
    # sqrt(6 / (192 + 2)) = 0.1759, std bound / sqrt(3) = 0.1015 (Kaiming fan_out gave std sqrt(2 / 2) = 1).
    torch.manual_seed(0)
    conv = build_model("nin", num_classes=2).classifier[-1]
    assert conv.weight.shape == (2, 192, 1, 1)
    assert conv.weight.abs().max().item() <= 0.1759
    assert abs(conv.weight.std().item() - 0.1015) < 0.01
    assert not conv.bias.any()
