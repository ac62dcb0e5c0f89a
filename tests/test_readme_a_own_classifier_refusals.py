"""README, "Your own classifier": a model whose output is a dict "is refused, naming its keys", whether
it returns the dict only in training or in eval too (the check before any data is read)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training import classify_resolve


class DictOutput(nn.Module):
    """A model answering as Hugging Face models do: a dict, in eval and training alike."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(1, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.head(x.mean((2, 3)))  # (B, 2)
        return {"logits": logits, "hidden": logits}


class TupleOutput(DictOutput):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        logits = self.head(x.mean((2, 3)))  # (B, 2)
        return logits, logits


def test_a_model_whose_eval_forward_returns_a_dict_is_refused_naming_its_keys():
    with pytest.raises(
        ValueError, match=r"--model mine: its eval forward gives a dict \(keys 'logits', 'hidden'\)"
    ):
        classify_resolve.check_logits("mine", DictOutput(), 16)


def test_a_model_whose_eval_forward_returns_a_tuple_is_refused_naming_its_parts():
    with pytest.raises(
        ValueError, match=r"gives a tuple of a tensor of shape \(2, 2\), a tensor of shape \(2, 2\)"
    ):
        classify_resolve.check_logits("mine", TupleOutput(), 16)


def test_a_model_giving_batch_by_classes_logits_passes_the_check():
    classify_resolve.check_logits("mine", nn.Sequential(nn.Flatten(), nn.LazyLinear(2)), 16)
