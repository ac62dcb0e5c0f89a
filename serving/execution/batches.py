"""What a dynamic batch is made of, for :class:`serving.execution.batcher.DynamicBatcher`.

A queued request (:class:`Pending`), Triton's rule for how many of the queued requests the next batch
takes (:func:`plan`: in order, while their items fit ``max_batch_size`` and their non-batch shapes
agree, sent at once at a preferred size), their inputs merged into one batch (:func:`merge`, copied
without letting go of the GIL) and the merged outputs split back into each request's own rows
(:func:`split`), which :func:`deliver` or :func:`settle` hands to each request's future on the event
loop. Pure functions over the requests: the queue, its lock and the threads stay in the batcher.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from serving.execution.batch_policy import BatchPolicy

Tensors = dict[str, np.ndarray]


@dataclass(eq=False, slots=True)
class Pending:
    """One queued request: its inputs, how many batch items they hold, what it merges with, its answer."""

    inputs: Tensors
    items: int
    signature: tuple
    future: asyncio.Future  # resolved on the event loop only
    arrival: float
    queue_timeout_s: float = math.inf  # how long it may wait in the queue (inf: no limit, or delayed)
    # With priority levels, its place in the queue's order (:func:`ranked_place`): twice its level, plus
    # one once DELAY put it behind its level's requests still within their queue timeout. 0 without.
    rank: int = 0


def plan(
    policy: BatchPolicy, first: Pending, waiting: Iterable[Pending], overdue: bool = False
) -> tuple[int, bool]:
    """How many of the ``waiting`` requests (in order) the next batch takes, and whether it must leave now.

    Triton's ``GetDynamicBatch``: the requests that fit ``max_batch_size`` and share ``first``'s shapes
    are examined; while the oldest has not waited the queue delay (``overdue``: it has, with a delay
    set), the batch is the longest run of them that makes a preferred size, or stops where the next
    one would pass the largest preferred size (``max_batch_size`` without preferred sizes); once
    overdue, or when no preferred size is made, it is all of them, leaving now when they fill the
    largest preferred size or the next one cannot join."""
    if not policy.merge:
        return 1, True
    preferred = policy.preferred_batch_sizes
    cap = max(preferred, default=policy.max_batch_size)  # Triton's max_preferred_batch_size_
    total, take, best, full = 0, 0, 0, False
    for pending in waiting:
        if take and not best and total + pending.items > cap:
            best = take  # the batch would pass the largest preferred size here
        if pending.signature != first.signature or total + pending.items > policy.max_batch_size:
            full = True  # the next request cannot join: send what fits
            break
        total, take = total + pending.items, take + 1
        if total in preferred:
            best = take
    if best and not overdue:
        return best, True
    if full or total >= cap:
        return max(take, 1), True
    return take, overdue


def sends_lone_item(policy: BatchPolicy) -> bool:
    """Whether :func:`plan` sends a one-item request alone in the queue at once: without a queue
    delay, or where one item is a preferred size or the largest batch (Triton holds it for the delay
    otherwise, for others to join it). Only such a request may skip the queue."""
    if not policy.merge or policy.max_queue_delay_s <= 0 or 1 in policy.preferred_batch_sizes:
        return True
    return max(policy.preferred_batch_sizes, default=policy.max_batch_size) <= 1


def ranked_place(queue: deque[Pending], rank: int) -> tuple[int, int]:
    """Where a request of ``rank`` joins a queue kept in rank order, and how many requests of its level
    the queue holds. Triton's ``PriorityQueue`` is a map of levels, lower first, each its queue then its
    delayed queue: a new request goes behind every request of a higher level and every one of its own
    level still within its queue timeout, ahead of its level's delayed ones and every lower level's.
    Read from the back, only as far as its level reaches."""
    level, at, same = rank >> 1, len(queue), 0
    for pending in reversed(queue):
        if pending.rank >> 1 < level:
            break
        same += pending.rank >> 1 == level
        at -= pending.rank > rank
    return at, same


def oldest_arrival(policy: BatchPolicy, first: Pending, waiting: Iterable[Pending]) -> float:
    """When the oldest of the requests a batch led by ``first`` may hold (those :func:`plan` examines)
    was queued: the queue delay runs from it (Triton's ``OldestEnqueueTime``). Only a DELAY queue policy
    puts a request older than ``first`` behind it."""
    oldest, total = first.arrival, 0
    for pending in waiting:
        if pending.signature != first.signature or total + pending.items > policy.max_batch_size:
            break
        total += pending.items
        oldest = min(oldest, pending.arrival)
    return oldest


def deliver(live: list[Pending], rows: list[Tensors]) -> None:
    for pending, result in zip(live, rows, strict=True):
        if not pending.future.done():
            pending.future.set_result(result)


def settle(live: list[Pending], answers: list[Tensors | Exception]) -> None:
    """Each request's own rows or its own error (after a failed batch)."""
    for pending, answer in zip(live, answers, strict=True):
        if pending.future.done():
            continue
        if isinstance(answer, Exception):
            pending.future.set_exception(answer)
        else:
            pending.future.set_result(answer)


def split(outputs: Tensors, live: list[Pending]) -> list[Tensors]:
    """Each request's own rows of the merged outputs (views, no copies)."""
    if len(live) == 1:
        return [outputs]
    rows, offset = [], 0
    for pending in live:
        rows.append({k: v[offset : offset + pending.items] for k, v in outputs.items()})
        offset += pending.items
    return rows


def items(inputs: Tensors, policy: BatchPolicy) -> int:
    """Batch items in a request: the size of axis 0 of its inputs (1 for non-batching models)."""
    if policy.max_batch_size <= 0 or not inputs:
        return 1
    return int(next(iter(inputs.values())).shape[0])


def signature(inputs: Tensors) -> tuple:
    """Requests merge only when names, dtypes and non-batch shapes agree."""
    return tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in inputs.items()))


def merge(requests: list[Tensors], *, batched: bool) -> Tensors:
    if len(requests) == 1 or not batched:
        return requests[0]
    return {name: stacked([r[name] for r in requests]) for name in requests[0]}


def stacked(parts: list[np.ndarray]) -> np.ndarray:
    """``parts`` one after another along the batch axis, copied without letting go of the GIL.

    ``np.concatenate`` releases the GIL around its copy of every part of 500 items or more, and the
    execution thread then waits to take it back from the event loop, which keeps it until it blocks or
    the interpreter's switch interval (5 ms) runs out. Under load that happened at nearly every part:
    perf_analyzer c=64 on resnet18, a batch's merge (18-30 requests) took 1.7-1.9 ms against 0.12-0.15
    for the batches that formed when the loop was idle; 18 parts of 1 KiB beside a busy Python thread,
    1.34 ms on average (p99 10 ms) against 1.7 us joined as bytes. ``bytes.join`` copies them all at once
    (letting go once, above 1 MiB); the result is read-only, as a lone request's view of its body is.
    Object arrays (BYTES tensors) and non-contiguous parts go through ``np.concatenate``."""
    first = parts[0]
    if first.dtype.hasobject or not all(part.flags.c_contiguous for part in parts):
        return np.concatenate(parts, axis=0)
    rows = sum(part.shape[0] for part in parts)
    return np.frombuffer(b"".join(parts), dtype=first.dtype).reshape((rows, *first.shape[1:]))
