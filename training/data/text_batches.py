"""Length-bucketed, padded batches of token ids for teacher-forced translation training.

Examples are sorted by length (random tie-break by seed) and cut into buckets of similar length, each
bucket one batch bounded by a token budget or a sentence count; bucket order is reshuffled every epoch
by ``seed + epoch``. Padding is right-padding with ``pad_id``; masks are True on real tokens.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from training.data.tokenizer import BOS_ID, EOS_ID, PAD_ID

Example = tuple[list[int], list[int]]  # (source ids ending in EOS, bare target ids)


@dataclass
class TranslationBatch:
    src: torch.Tensor  # Long[B, S]
    src_mask: torch.Tensor  # Bool[B, S]
    tgt_in: torch.Tensor  # Long[B, T]  BOS + target
    tgt_out: torch.Tensor  # Long[B, T]  target + EOS (pad where tgt_in is pad)
    tgt_mask: torch.Tensor  # Bool[B, T]

    @property
    def n_tokens(self) -> int:
        return int(self.tgt_mask.sum())

    def to(self, device: torch.device | str) -> TranslationBatch:
        """The same batch on ``device`` (the trainer's GPU, or unchanged on CPU)."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=True) for f in dataclasses.fields(self)
        }
        return TranslationBatch(**moved)


def pad_ids(seqs: Sequence[Sequence[int]], pad_id: int = PAD_ID) -> torch.Tensor:
    """Right-pad a list of id lists into a Long[B, max_len] tensor."""
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
    return out


def collate(examples: Sequence[Example]) -> TranslationBatch:
    """Pad sources; build teacher-forcing inputs (BOS + y) and targets (y + EOS)."""
    src = pad_ids([s for s, _ in examples])
    tgt_in = pad_ids([[BOS_ID, *t] for _, t in examples])
    tgt_out = pad_ids([[*t, EOS_ID] for _, t in examples])
    return TranslationBatch(
        src=src, src_mask=src != PAD_ID, tgt_in=tgt_in, tgt_out=tgt_out, tgt_mask=tgt_out != PAD_ID
    )


def bucket_batches(
    examples: Sequence[Example],
    *,
    batch_tokens: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
) -> list[list[int]]:
    """Index lists of similar-length examples; a batch's padded size stays within ``batch_tokens``."""
    if (batch_tokens is None) == (batch_size is None):
        raise ValueError("give exactly one of batch_tokens or batch_size")
    budget, what = (batch_size, "batch_size") if batch_size is not None else (batch_tokens, "batch_tokens")
    if budget < 1:  # batch_size 0 made an empty first batch; batch_tokens 0 ignored its budget
        raise ValueError(f"{what} must be >= 1, got {budget}")
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)  # random tie-break among equal lengths
    order.sort(key=lambda i: (len(examples[i][0]), len(examples[i][1])))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        length = max(len(examples[i][0]), len(examples[i][1]) + 1)
        new_width = max(width, length)
        full = (
            len(current) >= batch_size
            if batch_size is not None
            else current and new_width * (len(current) + 1) > batch_tokens
        )
        if full:
            batches.append(current)
            current, new_width = [], length
        current.append(i)
        width = new_width
    if current:
        batches.append(current)
    return batches


def too_few_batches(pairs: int, batches: int, world_size: int, batch_size: int | None) -> str:
    """Why ``pairs`` training pairs cannot train on ``world_size`` processes, and the flags that fix it:
    each process steps on batches of its own, and the split made only ``batches`` (it was "1 batches
    cannot feed 2 processes", naming neither the data nor a flag)."""
    fixes = ["more data"]
    if pairs >= world_size:  # batches of pairs // world_size make at least world_size of them
        fixes.insert(
            0, f"--batch-size {pairs // world_size} or less" if batch_size else "a smaller --batch-tokens"
        )
    if batches:
        fixes.append(f"fewer processes (torchrun --nproc_per_node {batches})")
    return (
        f"the {pairs} training sentence pair(s) make {batches} batch(es), fewer than the {world_size} "
        f"processes, each of which trains on batches of its own: use {', or '.join(fixes)}"
    )


class BucketedBatches:
    """Re-iterable: each pass yields every example once, in shuffled length buckets.

    Under data parallelism (``world_size`` > 1) every rank shuffles the buckets alike and takes every
    ``world_size``-th one from ``rank``, so the ranks see disjoint batches and the same number of them
    (the last ``len % world_size`` buckets of a pass are left out; the next pass's shuffle differs).
    """

    def __init__(
        self,
        examples: Sequence[Example],
        *,
        batch_tokens: int | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.examples = examples
        self.batches = bucket_batches(examples, batch_tokens=batch_tokens, batch_size=batch_size, seed=seed)
        if len(self.batches) < world_size:
            raise ValueError(too_few_batches(len(examples), len(self.batches), world_size, batch_size))
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.batches) // self.world_size

    def __iter__(self) -> Iterator[TranslationBatch]:
        order = list(range(len(self.batches)))
        random.Random(self.seed * 1000 + self.epoch).shuffle(order)
        self.epoch += 1
        for b in order[self.rank : len(self) * self.world_size : self.world_size]:
            yield collate([self.examples[i] for i in self.batches[b]])
