"""Architectures ML engineers write for themselves (README, "Your own classifier") through the training
loss and export's freeze step: auxiliary heads returned as torchvision returns them, and layers whose
weight is computed (``weight_norm``, ``spectral_norm``) in front of a BatchNorm."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from export.freeze import freeze
from training.classify_epoch import AUX_LOSS_WEIGHT, example_losses

B, CLASSES = 4, 3
InceptionOutputs = namedtuple("InceptionOutputs", ["logits", "aux_logits"])  # as torchvision's


def _outputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return (
        torch.randn(B, CLASSES),
        torch.randn(B, CLASSES),
        torch.randn(B, CLASSES),
        torch.tensor([0, 1, 2, 1]),
    )


def test_a_training_forward_returning_logits_and_one_aux_tensor_counts_the_aux_loss_once():
    """``(logits, aux)`` had the aux tensor's rows taken for heads: a cross_entropy shape error ("For 1D
    input, 1D target must have size 1") at the first batch."""
    logits, aux, _, labels = _outputs()
    got_logits, losses = example_losses((logits, aux), labels, 0.0)
    expected = F.cross_entropy(logits, labels, reduction="none")
    expected = expected + AUX_LOSS_WEIGHT * F.cross_entropy(aux, labels, reduction="none")
    assert got_logits is logits and torch.allclose(losses, expected)


@pytest.mark.parametrize(
    ("form", "counted"),
    [
        (lambda lo, a1, a2: (lo, a1, a2), 2),  # torchvision's GoogLeNetOutputs: several aux tensors
        (lambda lo, a1, a2: (lo, [a1, a2]), 2),  # Kiln's googlenet
        (lambda lo, a1, a2: InceptionOutputs(lo, a1), 1),
    ],
)
def test_the_tuple_forms_of_auxiliary_heads_all_train(form, counted):
    logits, aux1, aux2, labels = _outputs()
    expected = F.cross_entropy(logits, labels, reduction="none")
    for t in (aux1, aux2)[:counted]:
        expected = expected + AUX_LOSS_WEIGHT * F.cross_entropy(t, labels, reduction="none")
    assert torch.allclose(example_losses(form(logits, aux1, aux2), labels, 0.0)[1], expected)


def test_torchvisions_none_aux_trains_as_logits_alone():
    logits, _, _, labels = _outputs()
    _, losses = example_losses(InceptionOutputs(logits, None), labels, 0.0)
    assert torch.allclose(losses, F.cross_entropy(logits, labels, reduction="none"))


@pytest.mark.parametrize(
    ("make", "described"),
    [
        (lambda lo, a: {"logits": lo, "aux": a}, "a dict (keys 'logits', 'aux')"),
        (lambda lo, a: (lo, a[:, :2]), "a tuple of a tensor of shape (4, 3), a tensor of shape (4, 2)"),
    ],
)
def test_a_training_forward_of_another_form_is_refused_in_one_line_saying_what_to_return(make, described):
    """A dict was an AttributeError traceback ('dict' object has no attribute 'float')."""
    logits, aux, _, labels = _outputs()
    with pytest.raises(ValueError, match="training forward returned") as refused:
        example_losses(make(logits, aux), labels, 0.0)
    message = str(refused.value)
    assert "\n" not in message and described in message and "(logits, [aux, ...])" in message


class _Net(nn.Module):
    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.head = conv, nn.BatchNorm2d(4), nn.Linear(4, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.bn(self.conv(x))).mean((2, 3)))


def _trained(conv: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    model = _Net(conv).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 1, 8, 8))  # running statistics away from (0, 1)
        model.bn.weight.uniform_(0.5, 2.0)
        model.bn.bias.uniform_(-1.0, 1.0)
    return model.eval()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.nn.utils.weight_norm is deprecated
@pytest.mark.parametrize(
    "wrap",
    [parametrizations.weight_norm, parametrizations.spectral_norm, torch.nn.utils.weight_norm],
    ids=["weight_norm", "spectral_norm", "old_weight_norm"],
)
def test_a_batchnorm_after_a_conv_with_a_computed_weight_freezes_as_an_affine(wrap):
    """Folding into such a conv raised "attribute 'weight' already exists" (a KeyError traceback from
    torch's fuse_conv_bn_eval, or a TypeError for the older hook-based weight_norm)."""
    torch.manual_seed(1)
    model = _trained(wrap(nn.Conv2d(1, 4, 3, padding=1)))
    frozen, report = freeze(model, [torch.randn(2, 1, 8, 8)])
    assert report.folded == [] and report.affine == ["bn"]
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), model(x), atol=1e-5, rtol=1e-5)


def test_a_plain_conv_still_folds_its_batchnorm():
    frozen, report = freeze(_trained(nn.Conv2d(1, 4, 3, padding=1)), [torch.randn(2, 1, 8, 8)])
    assert report.folded == [("conv", "bn")] and report.affine == []
