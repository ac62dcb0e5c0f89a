"""A per-model dynamic batcher with Triton's ``dynamic_batching`` semantics.

Requests wait in a bounded queue. One execution thread per model instance forms a batch: it takes
queued requests in order while their items fit ``max_batch_size`` and their non-batch shapes agree,
sends it at once when a preferred batch size (or ``max_batch_size``) is reached, and otherwise waits
until the oldest request has waited ``max_queue_delay``. It then runs the merged batch itself and
hands every request exactly its own rows back with one event-loop wake-up per batch. That rule, the
merge and the split are :mod:`serving.execution.batches`; the queue, its threads and its policies here.

Why threads and not an asyncio worker task: a request that finds an instance idle costs one thread
wake-up there and one loop wake-up back, instead of an Event wake-up of a task, an executor future
wrapped into an asyncio one and a further task step (with a no-op model, 43 -> 27 us a request at
concurrency 1). The event loop holds the queue's lock only for an append.

Where the owner allows it (``inline``), a one-item request that finds the queue empty and every
instance idle runs on the event loop itself, without those two wake-ups: perf_analyzer gRPC c=1,
resnet18, 2 workers, 745 -> 864 req/s. The owner decides from how quiet its runs have been, and a
request that was waiting while the previous one ran on the loop (submitted within ``INLINE_GAP_S`` of
its end) is never run there: it goes through the queue, so batches form again under load.

Triton's queue policy (``default_queue_policy``, :mod:`serving.execution.batch_policy`): how long a
request may wait in the queue, the config's default or its own ``timeout`` parameter where that may
shorten it, apart from its deadline (504), which is the server's limit or the client's shorter one. Past
its queue timeout, REJECT answers it UNAVAILABLE "Request timeout expired" (503) and never runs it; DELAY
keeps it queued behind every request still within its timeout. A request already in a batch is not
affected. Without a default timeout the hot path tests one number.

Triton's priority levels (``priority_levels``): the queue is kept in level order, a lower level first
(:func:`~serving.execution.batches.ranked_place`), so a batch takes the highest-priority requests
first and fills up with lower ones; each level has its own queue policy and its own bound. Without
levels (every exported config) a request is appended to the one queue as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from itertools import chain
from operator import attrgetter
from typing import Any

from serving.errors import BadRequest, DeadlineExceeded, Overloaded, Unavailable
from serving.execution.batch_policy import BatchPolicy, QueuePolicy
from serving.execution.batches import (
    Pending,
    Tensors,
    deliver,
    items,
    merge,
    oldest_arrival,
    plan,
    ranked_place,
    settle,
    signature,
    split,
)
from serving.threads import name_os_thread

log = logging.getLogger(__name__)

# A closed loop of one client sends its next request a round trip after the answer (~0.4 ms measured
# with perf_analyzer on 2 cores in the tenth session, ~0.1-0.2 ms on the thirtieth session's faster VM);
# one submitted sooner after a run on the loop was waiting behind it. At 0.2 ms the faster VM's gRPC
# client looked backlogged at c=1 and its requests took the queue: perf_analyzer gRPC c=1 988-1 075 ->
# 1 582-2 021 req/s at 0.1 ms, the open loop at 1 800 req/s no worse (p99 8.9-15.8 -> 4.7-11.7 ms,
# three alternating rounds); at 0.05 ms more requests ran on the loop under the open load (p99 6.2-11.2
# against 3.3-5.2 ms).
INLINE_GAP_S = 0.0001

RunFn = Callable[[int, Tensors], Tensors]  # (instance index, merged inputs) -> outputs
_IDLE: list = []  # _next_batch's answer when an instance should release (compared by identity)


class DynamicBatcher:
    """Queue, merge and run the requests of one model version (one execution thread per instance)."""

    def __init__(
        self,
        name: str,
        run: RunFn,
        policy: BatchPolicy,
        *,
        observer: Any = None,
        retry_after_s: float = 1.0,
        inline: Callable[[bool], bool] | None = None,
        release: Callable[[int], None] | None = None,
        release_idle_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``inline(backlogged)``: whether a lone request may run on the event loop now (None: never).
        ``release(instance)``: hands back what the instance's merged batches grew (its session's
        memory arena), called by its thread once it has had nothing to run for ``release_idle_s``
        after running more than one item at once (None: never).
        ``clock``: what queue delays and timeouts are measured on (tests move their own)."""
        self.name, self.run, self.policy, self.inline = name, run, policy, inline
        self.release = release if release_idle_s else None
        # a wait past TIMEOUT_MAX raises in the instance's thread: that long is forever anyway
        self.release_idle_s = min(release_idle_s, threading.TIMEOUT_MAX) if release_idle_s else None
        self.releases = 0  # idle releases made, over all instances
        self.observer = observer  # GatewayMetrics-like: observe_queue / _batch / _release, watch_queue_depth
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._levels = policy.priority_levels  # 0: one queue in arrival order (the common case)
        self._queue_timeout_s = policy.longest_queue_timeout_s  # 0: no queue policy to apply (common too)
        self._rejects = any(p.rejects for p in self._queue_policies())  # some request's timer may reject
        self._queue: deque[Pending] = deque()
        self._delayed: deque[Pending] = deque()  # DELAY: timed out, behind every request in _queue
        self._ready = threading.Condition(threading.Lock())  # guards _queue and _delayed; signals arrivals
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._running = 0  # batches taken by the instance threads and not yet delivered
        self._inline_ended = -math.inf  # when the last run on the event loop ended (monotonic)

    @property
    def queue_depth(self) -> int:
        """Requests waiting, delayed ones included (they count against ``max_queue_size`` too)."""
        return len(self._queue) + len(self._delayed)

    def start(self) -> None:
        """Start one execution thread per instance; results go back to the running loop."""
        self._loop = asyncio.get_running_loop()
        if self.observer is not None:
            self.observer.watch_queue_depth(self.name, lambda: self.queue_depth)
        self._threads = [
            threading.Thread(target=self._serve, args=(i,), name=f"kiln-batch-{self.name}-{i}", daemon=True)
            for i in range(self.policy.instances)
        ]
        for thread in self._threads:
            thread.start()

    async def stop(self, grace_s: float = 30.0) -> None:
        """Refuse new requests, finish queued and running ones (up to ``grace_s``), then stop threads."""
        with self._ready:
            self._closing = True
            self._ready.notify_all()  # idle threads see the queue drained and leave
        deadline = time.monotonic() + grace_s
        for thread in self._threads:
            await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()))
        with self._ready:
            left = [*self._queue, *self._delayed]
            self._queue.clear()
            self._delayed.clear()
        for pending in left:  # only when a batch outlived the grace period
            if not pending.future.done():
                pending.future.set_exception(Unavailable(f"model {self.name!r} is shutting down"))

    async def submit(
        self,
        inputs: Tensors,
        timeout_s: float | None = None,
        own_timeout_s: float | None = None,
        priority: int = 0,
    ) -> Tensors:
        """Queue one request (already validated) and wait for its own output rows. ``timeout_s``: its
        deadline (504 past it); ``own_timeout_s``: its own KServe ``timeout`` parameter, what may shorten
        the queue timeout (:meth:`BatchPolicy.queue_wait`), never a server default or a gRPC deadline;
        ``priority``: its ``priority`` parameter (:meth:`BatchPolicy.level`; ignored without levels)."""
        if self._closing or self._loop is None:
            raise Unavailable(f"model {self.name!r} is shutting down", retry_after=self.retry_after_s)
        loop = self._loop
        if self._may_run_inline(inputs):
            return self._run_inline(inputs)
        pending = Pending(
            inputs, items(inputs, self.policy), signature(inputs), loop.create_future(), self._clock()
        )
        rejects = self._rejects
        if self._levels:
            rejects = self._enqueue_at_level(pending, self.policy.level(priority), own_timeout_s)
        else:
            if self._queue_timeout_s:
                pending.queue_timeout_s = self.policy.queue_wait(own_timeout_s)
            with self._ready:
                if len(self._queue) + len(self._delayed) >= self.policy.max_queue_size:
                    raise self._full(self.policy.max_queue_size)
                self._queue.append(pending)
                self._ready.notify()
        # A timer on the future itself, not wait_for(shield(...)): no extra task per request. A request
        # that expires or whose caller goes away leaves the queue at once; if its batch already left,
        # the execution thread's rows for it are dropped.
        timer = (
            loop.call_later(timeout_s, self._expire, pending, timeout_s) if timeout_s is not None else None
        )
        reject = loop.call_later(pending.queue_timeout_s, self._reject_queued, pending) if rejects else None
        try:
            return await pending.future
        except BaseException:
            self._withdraw(pending)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if reject is not None:
                reject.cancel()

    def _enqueue_at_level(self, pending: Pending, level: int, own_timeout_s: float | None) -> bool:
        """Queue ``pending`` at priority ``level`` under that level's queue policy, refused when the
        level's own ``max_queue_size`` or the model's bound is reached. Returns whether the level
        REJECTs a request past its queue timeout (its timer is then set)."""
        queue_policy = self.policy.queue_policy(level)
        pending.rank = 2 * level
        if queue_policy.timeout_s:
            pending.queue_timeout_s = queue_policy.queue_wait(own_timeout_s)
        with self._ready:
            if len(self._queue) >= self.policy.max_queue_size:
                raise self._full(self.policy.max_queue_size)
            at, same = ranked_place(self._queue, pending.rank)
            if queue_policy.max_size and same >= queue_policy.max_size:
                raise self._full(queue_policy.max_size, f" at priority level {level}")
            self._queue.insert(at, pending)
            self._ready.notify()
        return queue_policy.rejects

    def _full(self, size: int, where: str = "") -> Overloaded:
        return Overloaded(
            f"model {self.name!r}: queue is full ({size} requests waiting{where})",
            retry_after=self.retry_after_s,
        )

    def _queue_policies(self) -> list[QueuePolicy]:
        """Every queue policy a request of this model may be under."""
        own = self.policy.priority_queue_policy.values() if self._levels else ()
        return [self.policy.default_queue_policy, *own]

    def _may_run_inline(self, inputs: Tensors) -> bool:
        """A one-item request, nothing queued (or delayed) or running here, and the owner's leave."""
        if self.inline is None or self._queue or self._running or items(inputs, self.policy) != 1:
            return False
        return not self._delayed and self.inline(time.monotonic() - self._inline_ended < INLINE_GAP_S)

    def _run_inline(self, inputs: Tensors) -> Tensors:
        """Run a lone request on the calling thread (the event loop), as instance 0 would."""
        started = time.monotonic()
        try:
            outputs = self.run(0, inputs)
        except BadRequest as exc:  # a client's input, answered as its 400: no traceback, as in a batch
            log.info("model %s: a lone request refused: %s", self.name, exc)
            raise
        except Exception:
            log.exception("model %s: a lone request failed", self.name)
            raise
        finally:
            self._inline_ended = time.monotonic()
        if self.observer is not None:
            self.observer.observe_queue(self.name, 0.0)
            self.observer.observe_batch(self.name, 1, 1, 0.0, 0.0, self._inline_ended - started, 0.0)
        return outputs

    def _expire(self, pending: Pending, timeout_s: float) -> None:
        """Its deadline passed (504); if REJECT's queue timeout passed with it (its own timeout, as an
        override) and it is still queued, it is rejected as Triton would (whichever timer ran first)."""
        if self._rejects and pending.queue_timeout_s <= timeout_s and self._rejects_at(pending):
            self._reject_queued(pending)
        if not pending.future.done():
            pending.future.set_exception(
                DeadlineExceeded(f"model {self.name!r}: request timed out after {timeout_s:g} s")
            )

    def _rejects_at(self, pending: Pending) -> bool:
        """Whether ``pending``'s queue policy is REJECT (with levels, its own level's)."""
        return not self._levels or self.policy.queue_policy(pending.rank >> 1).rejects

    def _reject_queued(self, pending: Pending) -> None:
        """REJECT: a request still queued when its queue timeout passes is answered now, never run; one
        that a batch took already is not affected."""
        with self._ready:
            try:
                self._queue.remove(pending)
            except ValueError:
                return
        if not pending.future.done():
            pending.future.set_exception(self._timed_out(pending))

    def _timed_out(self, pending: Pending) -> Unavailable:
        """Triton's answer to a request that outwaited its queue timeout (UNAVAILABLE), with Retry-After."""
        return Unavailable(
            f"model {self.name!r}: Request timeout expired ({pending.queue_timeout_s:g} s in the queue)",
            retry_after=self.retry_after_s,
        )

    def _withdraw(self, pending: Pending) -> None:
        """Take a request that will not be answered out of the queue (if no batch took it yet)."""
        with self._ready:
            for queue in (self._queue, self._delayed):
                with contextlib.suppress(ValueError):
                    queue.remove(pending)
                    return

    # -- execution threads ---------------------------------------------------------------------------

    def _serve(self, instance: int) -> None:
        """One instance's thread: form a batch (Triton rules), run it, hand the rows back; repeat."""
        name_os_thread()
        grown = False  # a batch of more than one item ran since the last release
        while (batch := self._next_batch(grown)) is not None:
            if batch is _IDLE:
                grown = False
                self._release(instance)
                continue
            grown = grown or (self.release is not None and (len(batch) > 1 or batch[0].items > 1))
            try:
                self._execute(instance, batch)
            except Exception:  # noqa: BLE001 - a bug here must not kill the instance
                log.exception("model %s: instance %d failed to deliver a batch", self.name, instance)
            # answered: its requests' inputs (views of their bodies) and rows go now, not when the
            # next batch comes, which an idle gateway waits for with the burst's last batch held
            del batch

    def _next_batch(self, grown: bool = False) -> list[Pending] | None:
        """Wait until a batch should be dispatched, then take it off the queue (None: shut down;
        :data:`_IDLE`: ``grown`` and nothing came for ``release_idle_s``)."""
        with self._ready:
            while True:
                # when the next queued request times out: the batch may change then (Triton wakes too)
                soonest = self._apply_queue_policy(self._clock()) if self._queue_timeout_s else math.inf
                if not self._queue and not self._delayed:
                    if self._closing:
                        return None
                    if not grown:
                        self._ready.wait()
                    elif not self._ready.wait(self.release_idle_s) and not self._queue and not self._delayed:
                        return _IDLE
                    continue
                first = self._queue[0] if self._queue else self._delayed[0]
                now = self._clock()
                delay_s = self.policy.max_queue_delay_s
                oldest = first.arrival
                if self._delayed or self._levels:  # older requests may be behind the first (DELAY, levels)
                    oldest = oldest_arrival(self.policy, first, self._waiting())
                wait_s = oldest + delay_s - now
                overdue = wait_s <= 0 < delay_s  # Triton: past its delay, all that fit, not a preferred size
                take, ready = plan(self.policy, first, self._waiting(), overdue)
                if ready or wait_s <= 0 or self._closing:
                    self._running += 1  # before the queue empties: see submit's inline path
                    if self._delayed:
                        batch = self._take(take)
                    else:
                        batch = [self._queue.popleft() for _ in range(take)]
                    if self._queue or self._delayed:  # what is left may be due now: an idle instance's
                        self._ready.notify()
                    return batch
                self._ready.wait(min(wait_s, soonest - now, threading.TIMEOUT_MAX))

    def _waiting(self) -> Iterable[Pending]:
        """The queued requests in the order a batch takes them: those within their queue timeout first."""
        return chain(self._queue, self._delayed) if self._delayed else self._queue

    def _apply_queue_policy(self, now: float) -> float:
        """Triton's ``timeout_action`` on queued requests past their queue timeout: REJECT answers them,
        DELAY puts them behind every request still within its own (never to time out again). Returns
        when the next queued request times out."""
        soonest, expired = math.inf, []
        for pending in self._queue:
            expiry = pending.arrival + pending.queue_timeout_s
            if expiry <= now:
                expired.append(pending)
            elif expiry < soonest:
                soonest = expiry
        if expired and self._levels:
            self._apply_level_policies(expired, now)
        elif expired:
            kept = [p for p in self._queue if p.arrival + p.queue_timeout_s > now]
            self._queue.clear()
            self._queue.extend(kept)
            if self.policy.timeout_delays:
                for pending in expired:
                    pending.queue_timeout_s = math.inf
                self._delayed.extend(expired)
            else:
                self._hand_back(settle, expired, [self._timed_out(p) for p in expired])
        return soonest

    def _apply_level_policies(self, expired: list[Pending], now: float) -> None:
        """:meth:`_apply_queue_policy` with priority levels: each request past its queue timeout as its
        own level's policy says; a delayed one moves behind its level's requests still within theirs
        (and behind those delayed before it), ahead of every lower level's."""
        kept = [p for p in self._queue if p.arrival + p.queue_timeout_s > now]
        rejected = []
        for pending in expired:
            if self.policy.queue_policy(pending.rank >> 1).delays:
                pending.queue_timeout_s = math.inf
                pending.rank |= 1
                kept.append(pending)
            else:
                rejected.append(pending)
        kept.sort(key=attrgetter("rank"))  # stable: arrival order within a rank
        self._queue.clear()
        self._queue.extend(kept)
        if rejected:
            self._hand_back(settle, rejected, [self._timed_out(p) for p in rejected])

    def _take(self, count: int) -> list[Pending]:
        """The next batch where requests were delayed: those within their queue timeout first."""
        batch = [self._queue.popleft() for _ in range(min(count, len(self._queue)))]
        return batch + [self._delayed.popleft() for _ in range(count - len(batch))]

    def _execute(self, instance: int, batch: list[Pending]) -> None:
        """Run one batch on this thread; one loop wake-up delivers every request's rows (or the error)."""
        clock = self._clock
        started = merged_at = ran_at = clock()
        live = [p for p in batch if not p.future.done()]  # a racy read is fine: delivery checks again
        try:
            if live:
                merged = merge([p.inputs for p in live], batched=self.policy.max_batch_size > 0)
                merged_at = clock()
                outputs = self.run(instance, merged)
                ran_at = clock()
                rows = split(outputs, live)
        except Exception as exc:  # noqa: BLE001 - answered to the batch's requests, each alone
            if isinstance(exc, BadRequest):  # a client's input, answered as its 400: no traceback to log
                log.info("model %s: batch of %d request(s) refused: %s", self.name, len(live), exc)
            else:
                log.exception("model %s: batch of %d request(s) failed", self.name, len(live))
            self._answer_alone(instance, live, exc, started)
            return
        self._ran()  # before the answers leave: the next request may run on the loop at once
        if not live:
            return
        split_at = clock()
        self._hand_back(deliver, live, rows)
        if self.observer is not None:  # after the hand-back: off the requests' critical path
            waits = [started - pending.arrival for pending in live]
            for wait in waits:
                self.observer.observe_queue(self.name, wait)
            parts = (merged_at - started, ran_at - merged_at, split_at - ran_at)
            self.observer.observe_batch(self.name, sum(p.items for p in live), len(live), sum(waits), *parts)

    def _answer_alone(self, instance: int, live: list[Pending], exc: Exception, started: float) -> None:
        """After a failed batch (begun at ``started``): each request's own answer (:meth:`_one_by_one`),
        handed back in one wake-up; each that then succeeded is observed as the batch of one it ran in."""
        answers, alone = self._one_by_one(instance, live, exc) if len(live) > 1 else ([exc], [])
        self._ran()
        self._hand_back(settle, live, answers)
        if self.observer is None:
            return
        for pending, ran_s in alone:
            wait = started - pending.arrival
            self.observer.observe_queue(self.name, wait)
            self.observer.observe_batch(self.name, pending.items, 1, wait, 0.0, ran_s, 0.0)

    def _one_by_one(
        self, instance: int, live: list[Pending], failed: Exception
    ) -> tuple[list[Tensors | Exception], list[tuple[Pending, float]]]:
        """Each request of a failed batch run alone: one request's bad input fails only that request
        (DESIGN.md, isolation). Only after a failure, so it costs the batches that run nothing. A request
        answered meanwhile (its caller went away, its deadline passed) is not run again: no one would
        read its rows. Returns each request's answer (``failed`` for those not run, which delivery
        skips), and the requests that succeeded with their run's seconds (observed as the batches of one
        they ran in)."""
        answers: list[Tensors | Exception] = []
        alone: list[tuple[Pending, float]] = []
        for pending in live:
            if pending.future.done():  # a racy read is fine: settle checks again on the loop
                answers.append(failed)
                continue
            ran_from = self._clock()
            try:
                answers.append(split(self.run(instance, pending.inputs), [pending])[0])
            except Exception as exc:  # noqa: BLE001 - this request's own answer
                answers.append(exc)
                continue
            alone.append((pending, self._clock() - ran_from))
        return answers, alone

    def _release(self, instance: int) -> None:
        """The idle instance's release; a failure only leaves the memory held."""
        try:
            self.release(instance)  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - memory left held is no reason to stop serving
            log.debug("model %s: instance %d kept its memory (%s)", self.name, instance, exc)
            return
        self.releases += 1
        if self.observer is not None:
            self.observer.observe_release(self.name, "batch")
        log.debug("model %s: instance %d idle, its memory arena shrunk", self.name, instance)

    def _ran(self) -> None:
        """This instance's batch has run (see ``_running``)."""
        with self._ready:
            self._running -= 1

    def _hand_back(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)  # type: ignore[union-attr]
        except RuntimeError:  # the loop closed under a batch that outlived the shutdown grace
            log.warning("model %s: event loop closed; a batch's answers were dropped", self.name)
