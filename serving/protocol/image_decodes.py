"""Friendly classify's image decoding, a few images at a time per process and taken in turn by requests.

A 65 KB PNG may declare 4096x4096 pixels: 0.24 s of CPU and ~90 MB to decode. Each request decoded
its images on Starlette's thread pool, so up to 40 requests decoded at once (3.6 GB of such images)
and a request of 64 of them held its thread 15 s. Here at most ``slots`` runs of images decode at
once (the CPUs the process may use, ``--image-decodes``): a request takes one slot for a run of its
images of at most RUN_PIXELS declared pixels (or one larger image) and queues again for the next, behind
the runs of requests already waiting, so a small request waits for one run, not for a large request's
every image. Its images' headers are read before any is decoded: over ``--max-request-pixels`` in all
is a 413 (:func:`serving.protocol.images.declared_pixels`). A request that finds ``max_waiting``
requests already queued for a slot is a 429 before any of its images is decoded: the queue was
unbounded, so past the rate the decodes keep up with (or the model's queue is full) thousands of
requests queued here for seconds, each decoded only to be refused by a full model queue or answered
late. A request's deadline (``--request-timeout-s``, from its body read: :class:`~serving.errors.Deadline`)
bounds its waits here too, for a slot and for its runs' decodes: it left the slots' queue only once a
slot came, and its deadline started only at the model's queue, so a request that waited 40 s for a slot
was still given 30 s more there. Past it the request is a 504 naming the wait it was in, its place in
the queue given up at once (a run already decoding finishes on its thread, holding its slot till then).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np
from starlette.concurrency import run_in_threadpool

from serving.errors import Deadline, Overloaded
from serving.protocol import images

# The declared pixels of one request's run of images decoded under one slot: ~15 ms of PNG decoding,
# so 64 thumbnails are one thread hop and a small request waits that long behind a run of large ones.
RUN_PIXELS = 1 << 20
T = TypeVar("T")


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int  # one image (--max-image-pixels)
    budget: int  # one request's images in all (--max-request-pixels)


class DecodeSlots:
    """``slots`` slots, first come, first served: a released slot goes to the longest waiter, never to
    a task asking again at once, so a request's next run queues behind the runs already waiting. Bound
    to no event loop (an asyncio.Semaphore binds to the first that waits on it; an app may run under
    several, as tests' clients run it)."""

    def __init__(self, slots: int, max_waiting: int | None = None, retry_after_s: float = 1.0) -> None:
        self.free = slots
        self.waiting: deque[asyncio.Future[None]] = deque()
        self.max_waiting, self.retry_after_s = max_waiting, retry_after_s  # None: unbounded

    async def acquire(self, first: bool = False, deadline: Deadline | None = None) -> None:
        """A slot, in turn; ``first``: the request's first run, refused (429) where ``max_waiting``
        requests already wait (a later run of a request already decoding always queues). A request
        that queues leaves the queue at its ``deadline``, a 504 (a timer only for one that queues)."""
        if self.free and not self.waiting:
            self.free -= 1
            return
        if first and self.max_waiting is not None and len(self.waiting) >= self.max_waiting:
            raise Overloaded(
                f"image decoding: {len(self.waiting)} requests already waiting to decode; retry later",
                retry_after=self.retry_after_s,
            )
        loop = asyncio.get_running_loop()  # no loop bound at construction
        waiter = loop.create_future()
        self.waiting.append(waiter)
        timer = None if deadline is None else loop.call_at(deadline.at, self._expire, waiter, deadline)
        try:
            await waiter
        except asyncio.CancelledError:
            if _holds_slot(waiter):  # handed a slot as it was cancelled: pass it on
                self.release()
            elif waiter in self.waiting:
                self.waiting.remove(waiter)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, waiter: asyncio.Future[None], deadline: Deadline) -> None:
        """``waiter``'s deadline passed before a slot came: it leaves the queue now, a 504."""
        if waiter.done():  # handed a slot (or cancelled) in the same turn of the loop
            return
        ahead = self.waiting.index(waiter)
        self.waiting.remove(waiter)
        waited = f"for an image-decode slot ({ahead} requests queued before it; --image-decodes sets them)"
        waiter.set_exception(deadline.passed("image decoding", waited))

    def release(self) -> None:
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to it, never counted free in between
                return
        self.free += 1


async def decode_images(
    slots: DecodeSlots,
    blobs: list[bytes],
    preprocessing: dict[str, Any],
    limits: ImageLimits,
    deadline: Deadline | None = None,
) -> list[np.ndarray]:
    """The request's images as model arrays, in order: a thread hop per run, each holding a slot (one
    hop for a lone image, as before); the first hop reads every header before it decodes. Past
    ``deadline``, a 504 naming the wait it cut: a slot's (:meth:`DecodeSlots.acquire`) or a run's."""
    arrays: list[np.ndarray] = []
    ends: list[int] | None = None
    while ends is None or len(arrays) < len(blobs):
        await slots.acquire(first=ends is None, deadline=deadline)
        hop = asyncio.ensure_future(
            run_in_threadpool(_next_run, blobs, preprocessing, limits, ends, len(arrays))
        )
        try:
            if deadline is None:
                run, ends = await asyncio.shield(hop)
            else:
                run, ends = await _within(hop, deadline, len(arrays), len(blobs))
        finally:
            _release_when_done(slots, hop)
        arrays.extend(run)
    return arrays


async def _within(hop: asyncio.Future[T], deadline: Deadline, decoded: int, images: int) -> T:
    """``hop``'s result, shielded as :func:`asyncio.shield` would (its thread runs on when the request is
    cancelled), or a 504 at ``deadline``: a timer on the awaited future itself, no task."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[T] = loop.create_future()
    hop.add_done_callback(partial(_pass_on, waiter))
    timer = loop.call_at(deadline.at, _cut, waiter, deadline, decoded, images)
    try:
        return await waiter
    finally:
        timer.cancel()


def _pass_on(waiter: asyncio.Future[T], hop: asyncio.Future[T]) -> None:
    if waiter.done():  # the request left, or its deadline passed: nobody waits for this result
        if not hop.cancelled():
            hop.exception()  # retrieved
    elif hop.cancelled():
        waiter.cancel()
    elif (error := hop.exception()) is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(hop.result())


def _cut(waiter: asyncio.Future[Any], deadline: Deadline, decoded: int, images: int) -> None:
    if not waiter.done():
        waited = f"for its images to decode ({decoded} of {images} decoded)"
        waiter.set_exception(deadline.passed("image decoding", waited))


def _holds_slot(waiter: asyncio.Future[None]) -> bool:
    """Whether ``waiter`` was handed a slot (not cancelled, nor ended by its deadline)."""
    return waiter.done() and not waiter.cancelled() and waiter.exception() is None


def _release_when_done(slots: DecodeSlots, hop: asyncio.Future[Any]) -> None:
    """The hop's slot released once its thread returns: a request cancelled mid-hop (its client left,
    or the server stops) leaves at once, but its thread decodes on, and a slot freed at the cancel let
    the next request decode beside it (more decodes at once than the slots, each up to ~90 MB)."""
    if hop.done():
        slots.release()
        return

    def finished(done: asyncio.Future[Any]) -> None:
        if not done.cancelled():
            done.exception()  # retrieved: nobody waits for the result of a request that left
        slots.release()

    hop.add_done_callback(finished)


def _next_run(
    blobs: list[bytes], preprocessing: dict[str, Any], limits: ImageLimits, ends: list[int] | None, start: int
) -> tuple[list[np.ndarray], list[int]]:
    """The run of images from ``start`` decoded, and where every run ends (planned from the headers on
    the first call)."""
    if ends is None:
        pixels = images.declared_pixels(blobs, max_pixels=limits.max_pixels, budget=limits.budget)
        ends = run_ends(pixels, RUN_PIXELS)
    end = next((e for e in ends if e > start), start)
    run = [
        images.decode_image(blobs[i], preprocessing, index=i, max_pixels=limits.max_pixels)
        for i in range(start, end)
    ]
    return run, ends


def run_ends(pixels: list[int], run_pixels: int) -> list[int]:
    """Where each run of consecutive images ends: at most ``run_pixels`` in a run, or one image alone."""
    ends, total = [], 0
    for i, count in enumerate(pixels):
        if total and total + count > run_pixels:
            ends.append(i)
            total = 0
        total += count
    return [*ends, len(pixels)]
