"""Admission into a decoding scheduler's running batch: which waiting sentences join it, and when.

A join costs one encoder call and new rows in the batch's arrays whatever the number of joiners, so
joiners into a running batch are grouped (:func:`ready_to_admit`), and those that join are taken FIFO
within the free rows and one encoder call (:func:`pick`). :class:`Job` is the request the scheduler's
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
    if steps - waiting[0].queued_step >= config.join_wait_steps:
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
    """The waiting sentences (FIFO) that fit ``budget`` rows and one encoder call (caller holds the
    lock); ``take`` marks them admitted and pops the requests all of whose sentences are."""
    picked: list[tuple[Job, int]] = []
    job_index, source = 0, None
    while job_index < len(waiting) and len(picked) < config.max_encoder_batch:
        job = waiting[job_index]
        source = job.next_source if source is None else source
        if job.config.beam_size > budget:
            break
        picked.append((job, source))
        budget -= job.config.beam_size
        source += 1
        if source == len(job.sources):
            job_index, source = job_index + 1, None
    if take:
        for job, index in picked:
            job.next_source = index + 1
        now = time.monotonic()
        for _ in range(job_index):
            waiting.popleft().admitted = now
    return picked
