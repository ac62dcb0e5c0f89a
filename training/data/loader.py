"""Mini-batches over in-memory image tensors, sharded across data-parallel ranks.

The datasets are small uint8 tensors already in memory, so indexing them directly is far cheaper than
a DataLoader's per-item collate. Training order comes from a seeded permutation (one process) or from
``DistributedSampler`` with ``set_epoch`` (torchrun), so an epoch's order depends only on (seed, epoch):
a resumed run sees the same batches it would have seen.
"""

from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler

from training.data.images import ImageDataset


def train_batches(
    dataset: ImageDataset, batch_size: int, *, epoch: int, seed: int, rank: int = 0, world_size: int = 1
) -> list[torch.Tensor]:
    """This rank's shuffled index batches for ``epoch``; a trailing batch of one is dropped (BatchNorm)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.int64)
    else:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()
    return batches


def eval_batches(
    dataset: ImageDataset, batch_size: int, *, rank: int = 0, world_size: int = 1
) -> list[torch.Tensor]:
    """This rank's strided share of the dataset in order, with no padding, so summed metrics are exact."""
    indices = torch.arange(rank, len(dataset), world_size)
    return list(indices.split(max(1, batch_size)))
