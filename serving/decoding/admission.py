"""Admission into a decoding scheduler's running batch: which waiting sentences join it, and when.

A join costs one encoder call and new rows in the batch's arrays whatever the number of joiners, so
joiners into a running batch are grouped (:func:`ready_to_admit`), and those that join are taken one
sentence of each waiting request in turn within the free rows and one encoder call (:func:`pick`). :class:`Job` is the request the scheduler's
queue and batch hold. The decode loop that calls these under its lock, encodes the picked sentences and
joins them is :class:`serving.decoding.scheduler.DecodingScheduler`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from serving.decoding import beam_search as bs
from serving.decoding.scheduler_config import SchedulerConfig


@dataclass(eq=False)
class Job:
    """One submitted request: its sentences, their results and the future its caller awaits.

    ``closed`` is set once the request is answered or abandoned (by either thread); the decode thread
    then drops its rows. ``future`` is only touched on the event loop."""

    sources: list[list[int]]
    config: bs.BeamConfig
    future: asyncio.Future
    deadline: float
    started: float = field(default_factory=time.monotonic)
    admitted: float | None = None  # when its last sentence was admitted (decode thread; monotonic)
    next_source: int = 0  # sources[:next_source] were admitted
    queued_step: int = 0  # the scheduler's step count when it was queued
    results: dict[int, list[bs.Hypothesis]] = field(default_factory=dict)
    closed: bool = False
    version: str = ""  # the version the request named ("": the latest), which its statistics count under


def ready_to_admit(waiting: deque[Job], steps: int, running: int, config: SchedulerConfig) -> bool:
    """Whether the ``waiting`` requests' sentences join ``running`` sentences now, ``steps`` decoder
    steps into the scheduler's run (caller holds the lock; something is waiting).

    They join once they are ``join_fraction`` of the running sentences or the oldest has waited
    ``join_wait_steps`` steps. An idle batch admits at once (a lone request pays no wait).
    """
    if steps - oldest_queued_step(waiting) >= config.join_wait_steps:
        return True
    return fraction_waiting(waiting, running, config)


def fraction_waiting(waiting: deque[Job], running: int, config: SchedulerConfig) -> bool:
    """Whether the batch is idle (no ``running`` sentences) or the waiting sentences are
    ``join_fraction`` of the running ones (caller holds the lock): the joiners need not wait for more
    steps."""
    if not running:
        return True
    sentences = sum(len(job.sources) - job.next_source for job in waiting)
    return sentences >= config.join_fraction * running


def pick(waiting: deque[Job], budget: int, config: SchedulerConfig, take: bool) -> list[tuple[Job, int]]:
    """The waiting sentences that fit ``budget`` rows and one encoder call, one of each request in turn
    (caller holds the lock); ``take`` marks them admitted, pops the requests all of whose sentences are
    and leaves ``waiting`` in turn order, a request that still waits behind the others whose turn came
    after its own. Round-robin by request, not FIFO by sentence: a request of more sentences than the
    rows hold (64 texts at beam 16 over 256 rows) no longer makes a one-sentence request behind it wait
    until its every sentence has joined, and its own turn comes once a round however many arrive
    behind it. A turn whose sentence does not fit ends the pick, so the rows that free are kept for it
    (smaller sentences behind it do not take them first)."""
    picked: list[tuple[Job, int]] = []
    turns = deque(waiting)
    admitted: dict[Job, int] = {}  # each picked request's next source after this pick
    while turns and len(picked) < config.max_encoder_batch:
        job = turns[0]
        if job.config.beam_size > budget:
            break
        source = admitted.get(job, job.next_source)
        picked.append((job, source))
        budget -= job.config.beam_size
        admitted[job] = source + 1
        turns.popleft()
        if source + 1 < len(job.sources):
            turns.append(job)
    if take:
        now = time.monotonic()
        for job, next_source in admitted.items():
            job.next_source = next_source
            if next_source == len(job.sources):
                job.admitted = now
        waiting.clear()
        waiting.extend(turns)
    return picked


def oldest_queued_step(waiting: deque[Job]) -> int:
    """The step count at which the longest-waiting request was queued (caller holds the lock; something
    is waiting): with turns (:func:`pick`) the first in ``waiting`` may have come last."""
    return min(job.queued_step for job in waiting)
