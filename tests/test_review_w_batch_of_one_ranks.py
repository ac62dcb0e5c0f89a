"""Under torchrun, ``--limit-train`` images are shared among the processes (DistributedSampler, padded):
with no more images than processes each rank trains on batches of one, which a BatchNorm model whose
last maps are 1x1 cannot (58b91e6 refused ``--limit-train 1`` alone; ``--limit-train 2`` on two ranks
still stopped at the first step with PyTorch's "Expected more than 1 value per channel")."""

from __future__ import annotations

import pytest

from training.classify_config import TrainConfig
from training.classify_resolve import resolve
from training.data.images import ImageDataset
from training.data.loader import train_batches


def _config(tmp_path, limit: int) -> TrainConfig:
    return TrainConfig(model="resnet18", image_size=32, limit_train=limit, output_dir=str(tmp_path / "out"))


def test_each_rank_gets_one_image_when_the_limit_is_no_larger_than_the_processes():
    """What the refusal rests on: the sampler's share of 2 images among 2 ranks is one image each."""
    import torch

    data = ImageDataset(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"])
    shares = [train_batches(data, 64, epoch=0, seed=0, rank=r, world_size=2) for r in (0, 1)]
    assert [[len(b) for b in share] for share in shares] == [[1], [1]]


@pytest.mark.parametrize(("limit", "world"), [(2, 2), (1, 2), (4, 4)])
def test_a_limit_of_one_image_per_rank_is_refused_naming_the_fix(tmp_path, monkeypatch, limit, world):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    with pytest.raises(ValueError) as err:
        resolve(_config(tmp_path, limit))
    assert str(err.value).startswith(f"--limit-train {limit}: resnet18 normalizes over the batch (BatchNorm)")
    assert f"(each of the {world} processes gets one)" in str(err.value)
    assert f"use --limit-train {world + 1} or more, or --image-size 33 or more" in str(err.value)


def test_more_images_than_ranks_and_one_process_keep_their_limits(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve(_config(tmp_path, 3)).limit_train == 3  # shares of 2: batches of two
    monkeypatch.delenv("WORLD_SIZE")
    assert resolve(_config(tmp_path, 2)).limit_train == 2
