"""Mini-batches over in-memory image tensors, sharded across data-parallel ranks.

The datasets are small uint8 tensors already in memory, so indexing them directly is far cheaper than
a DataLoader's per-item collate. Training order comes from a seeded permutation (one process) or from
``DistributedSampler`` seeded by seed + epoch (torchrun), so an epoch's order depends only on (seed,
epoch): a resumed run sees the same batches it would have seen.
"""

from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler

from training.data.images import ImageDataset

SEED_RANGE = (-(2**63), 2**64)  # what torch.Generator.manual_seed takes: [low, high)


def stream_seed(value: int) -> int:
    """``value`` as a seed a torch generator takes: a stream's seed derived from ``--seed`` (times a large
    number, plus the epoch) leaves torch's range for seeds in its upper part, ``--seed $(date +%s%N)``
    among them, which torch refuses ("Overflow when unpacking long long"); seeds inside stay as they are."""
    low, high = SEED_RANGE
    return value if low <= value < high else value % high


def train_batches(
    dataset: ImageDataset, batch_size: int, *, epoch: int, seed: int, rank: int = 0, world_size: int = 1
) -> list[torch.Tensor]:
    """This rank's shuffled index batches for ``epoch``; a trailing batch of one is dropped (BatchNorm)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if world_size > 1:
        # the sampler seeds its shuffle with seed + epoch: summed here, where it can be kept in range
        shuffle_seed = stream_seed(seed + epoch)
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=shuffle_seed
        )
        order = torch.tensor(list(sampler), dtype=torch.int64)
    else:
        generator = torch.Generator().manual_seed(stream_seed(seed * 100_003 + epoch))
        order = torch.randperm(len(dataset), generator=generator)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()
    return batches


def eval_batches(
    dataset: ImageDataset, batch_size: int, *, rank: int = 0, world_size: int = 1
) -> list[torch.Tensor]:
    """This rank's strided share of the dataset in order, with no padding, so summed metrics are exact.
    A rank with no share (a split smaller than the processes) gets no batch: ``torch.arange`` refused a
    rank past the split's end ("upper bound and lower bound inconsistent"), and a rank just at it got one
    empty batch, which a model of the user's flattening with ``x.view(x.size(0), -1)`` refused; either
    stopped that rank alone, where one process trained the same flags."""
    indices = torch.arange(len(dataset))[rank::world_size]
    return list(indices.split(max(1, batch_size))) if len(indices) else []
