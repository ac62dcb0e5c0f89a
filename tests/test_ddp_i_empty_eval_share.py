"""Under torchrun each rank evaluates its strided share of the validation split (no padding). A rank with
no share (a split smaller than the processes: ``--limit-val 1`` on two) got one empty batch, and ran the
model on 0 images: a classifier of the user's flattening with ``x.view(x.size(0), -1)`` raised "cannot
reshape tensor of 0 elements" on that rank alone, and the run stopped with torchrun's failure summary,
where one process trained the same flags."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from training import classify_epoch
from training.data.images import ImageDataset
from training.data.loader import eval_batches
from training.runtime import Dist


def _images(n: int) -> ImageDataset:
    labels = torch.arange(n) % 2
    return ImageDataset(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), labels, ["a", "b"])


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_the_ranks_batches_hold_every_image_once_and_none_is_empty(n, world):
    shares = [eval_batches(_images(n), 2, rank=r, world_size=world) for r in range(world)]
    assert all(len(batch) for share in shares for batch in share)
    assert sorted(int(i) for share in shares for batch in share for i in batch) == list(range(n))


class RefusesNoImages(nn.Module):
    """A classifier of the user's that cannot take a batch of 0 images (``view(B, -1)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.view(x.size(0), -1))


def test_a_rank_without_validation_images_runs_no_forward(monkeypatch):
    """Rank 1 of 2 with a 1-image split: its evaluation adds nothing and runs the model on nothing (the
    process group's collectives stubbed: rank 0's share is its own)."""
    monkeypatch.setattr(classify_epoch.dist, "broadcast", lambda tensor, src: None)
    monkeypatch.setattr(classify_epoch, "all_sum", lambda values, d: values)
    module = RefusesNoImages()
    run = types.SimpleNamespace(dist=Dist(1, 2, torch.device("cpu")), module=module, mean=[0.5], std=[0.25])
    loss, accuracy = classify_epoch.evaluate(run, _images(1))
    assert (loss, accuracy) == (0.0, 0.0)  # rank 1's sums: rank 0's image is added by all_sum
