"""A per-model dynamic batcher with Triton's ``dynamic_batching`` semantics.

Requests wait in a bounded queue. One execution thread per model instance forms a batch: it takes
queued requests in order while their items fit ``max_batch_size`` and their non-batch shapes agree,
sends it at once when a preferred batch size (or ``max_batch_size``) is reached, and otherwise waits
until the oldest request has waited ``max_queue_delay``. It then runs the merged batch itself and
hands every request exactly its own rows back with one event-loop wake-up per batch. That rule, the
merge and the split are :mod:`serving.execution.batches`; the queue's order under Triton's queue policy
and priority levels (REJECT or DELAY past a request's queue timeout, a lower level first)
:mod:`serving.execution.batch_queue`; a batch's run, its isolation and its metrics
:mod:`serving.execution.batch_runs`. The queue itself, its lock and its threads are here.

Why threads and not an asyncio worker task: a request that finds an instance idle costs one thread
wake-up there and one loop wake-up back, instead of an Event wake-up of a task, an executor future
wrapped into an asyncio one and a further task step (with a no-op model, 43 -> 27 us a request at
concurrency 1). The event loop holds the queue's lock only for an append.

Where the owner allows it (``inline``), a one-item request that finds the queue empty and every
instance idle, and that the config would not hold for its queue delay (Triton waits that long for
others to join it, short of a preferred size), runs on the event loop itself, without those two
wake-ups: perf_analyzer gRPC c=1, resnet18, 2 workers, 745 -> 864 req/s. The owner decides from how quiet its runs have been, and a
request that was waiting while the previous one ran on the loop (submitted within ``INLINE_GAP_S`` of
its end) is never run there: it goes through the queue, so batches form again under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from serving.errors import (
    BadRequest,
    DeadlineExceeded,
    Overloaded,
    Unavailable,
    mark_models_answer,
    seconds_text,
)
from serving.execution.batch_policy import BatchPolicy
from serving.execution.batch_queue import apply_timeouts, due, rejects_any, rejects_at, take_batch
from serving.execution.batch_runs import RunFn, observe_alone, observe_batch, run_merged, run_one_by_one
from serving.execution.batches import (
    Pending,
    Tensors,
    deliver,
    items,
    ranked_place,
    sends_lone_item,
    settle,
    signature,
)
from serving.threads import name_os_thread, os_name

log = logging.getLogger(__name__)

# A closed loop of one client sends its next request a round trip after the answer (~0.4 ms measured
# with perf_analyzer on 2 cores in the tenth session, ~0.1-0.2 ms on the thirtieth session's faster VM);
# one submitted sooner after a run on the loop was waiting behind it. At 0.2 ms the faster VM's gRPC
# client looked backlogged at c=1 and its requests took the queue: perf_analyzer gRPC c=1 988-1 075 ->
# 1 582-2 021 req/s at 0.1 ms, the open loop at 1 800 req/s no worse (p99 8.9-15.8 -> 4.7-11.7 ms,
# three alternating rounds); at 0.05 ms more requests ran on the loop under the open load (p99 6.2-11.2
# against 3.3-5.2 ms).
INLINE_GAP_S = 0.0001

_IDLE: list = []  # _next_batch's answer when an instance should release (compared by identity)

# Batchers started in this process, in order: their number keeps their threads' OS names apart. Linux
# keeps 15 bytes of a thread's name, so "kiln-batch-<model>-<instance>" showed "kiln-batch-resn" for
# resnet18 and resnet18_int8 alike (and for every version of one model) in top -H, py-spy and perf; the
# backend's start-up line "batch threads ..." maps each name to its model version.
_SERIALS = itertools.count()


def batch_thread_name(serial: int, instance: int, name: str) -> str:
    """The OS name of instance ``instance``'s execution thread of the ``serial``-th batcher, of model
    ``name``: ``kbat<serial>.<instance>-<name>`` cut to 15 bytes, the numbers (which make it unique)
    always whole (as :func:`serving.decoding.translator.decode_thread_name`)."""
    return os_name(f"kbat{serial}.{instance}-{name}")


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
        version: str = "",
    ) -> None:
        """``version``: the model version it runs, which its observations are labelled with.
        ``inline(backlogged)``: whether a lone request may run on the event loop now (None: never).
        ``release(instance)``: hands back what the instance's merged batches grew (its session's
        memory arena), called by its thread once it has had nothing to run for ``release_idle_s``
        after running more than one item at once (None: never).
        ``clock``: what queue delays and timeouts are measured on (tests move their own)."""
        self.name, self.run, self.policy, self.inline = name, run, policy, inline
        self.version = version
        self.release = release if release_idle_s else None
        # a wait past TIMEOUT_MAX raises in the instance's thread: that long is forever anyway
        self.release_idle_s = min(release_idle_s, threading.TIMEOUT_MAX) if release_idle_s else None
        self.releases = 0  # idle releases made, over all instances
        self.observer = observer  # GatewayMetrics-like: observe_queue / _batch / _release, watch_queue_depth
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._levels = policy.priority_levels  # 0: one queue in arrival order (the common case)
        self._queue_timeout_s = policy.longest_queue_timeout_s  # 0: no queue policy to apply (common too)
        self._rejects = rejects_any(policy)  # some request's timer may reject
        self._lone_leaves = sends_lone_item(policy)  # else a lone request waits the queue delay
        self._queue: deque[Pending] = deque()
        self._delayed: deque[Pending] = deque()  # DELAY: timed out, behind every request in _queue
        self._ready = threading.Condition(threading.Lock())  # guards _queue and _delayed; signals arrivals
        self._threads: list[threading.Thread] = []
        self.thread_names: list[str] = []  # its threads' OS names (batch_thread_name), once started
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._running = 0  # batches taken by the instance threads and not yet delivered
        self._inline_ended = -math.inf  # when the last run on the event loop ended (monotonic)

    @property
    def queue_depth(self) -> int:
        """Requests waiting, delayed ones included (they count against ``max_queue_size`` too)."""
        return len(self._queue) + len(self._delayed)

    def waiting(self) -> int:
        """:attr:`queue_depth` as a method: the observer sums each version's batcher's by it (one per
        batcher, however often given)."""
        return self.queue_depth

    def start(self) -> None:
        """Start one execution thread per instance; results go back to the running loop."""
        self._loop = asyncio.get_running_loop()
        if self.observer is not None:
            self.observer.watch_queue_depth(self.name, self.waiting)
        serial = next(_SERIALS)
        self.thread_names = [batch_thread_name(serial, i, self.name) for i in range(self.policy.instances)]
        self._threads = [  # the Python name (what logs and tracebacks show) keeps the whole model name
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
            try:
                return self._run_inline(inputs)
            except Exception as error:
                mark_models_answer(error)  # the model ran it (serving.errors.MODELS_ANSWER)
                raise
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
        except BaseException as error:
            self._withdraw(pending)
            mark_models_answer(error)  # queued, it is the model's answer now, as Triton's once enqueued
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

    def _may_run_inline(self, inputs: Tensors) -> bool:
        """A one-item request, nothing queued (or delayed) or running here, a policy that would send it
        at once (not one that holds it for the queue delay), and the owner's leave."""
        if self.inline is None or self._queue or self._running or items(inputs, self.policy) != 1:
            return False
        if not self._lone_leaves:
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
            self.observer.observe_batch(
                self.name, 1, 1, 0.0, 0.0, self._inline_ended - started, 0.0, self.version
            )
        return outputs

    def _expire(self, pending: Pending, timeout_s: float) -> None:
        """Its deadline passed (504); if REJECT's queue timeout passed with it (its own timeout, as an
        override) and it is still queued, it is rejected as Triton would (whichever timer ran first)."""
        if self._rejects and pending.queue_timeout_s <= timeout_s and rejects_at(self.policy, pending):
            self._reject_queued(pending)
        if not pending.future.done():
            pending.future.set_exception(
                DeadlineExceeded(f"model {self.name!r}: request timed out after {seconds_text(timeout_s)} s")
            )

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
        name_os_thread(self.thread_names[instance])
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
                soonest = self._apply_queue_policy() if self._queue_timeout_s else math.inf
                if not self._queue and not self._delayed:
                    if self._closing:
                        return None
                    if not grown:
                        self._ready.wait()
                    elif not self._ready.wait(self.release_idle_s) and not self._queue and not self._delayed:
                        return _IDLE
                    continue
                now = self._clock()
                take, wait_s = due(self.policy, self._queue, self._delayed, now)
                if wait_s <= 0 or self._closing:
                    self._running += 1  # before the queue empties: see submit's inline path
                    batch = take_batch(self._queue, self._delayed, take)
                    if self._queue or self._delayed:  # what is left may be due now: an idle instance's
                        self._ready.notify()
                    return batch
                self._ready.wait(min(wait_s, soonest - now, threading.TIMEOUT_MAX))

    def _apply_queue_policy(self) -> float:
        """Apply the queue policy now (:func:`~serving.execution.batch_queue.apply_timeouts`), answering
        the requests it rejects; returns when the next queued request times out."""
        soonest, rejected = apply_timeouts(self.policy, self._queue, self._delayed, self._clock())
        if rejected:
            self._hand_back(settle, rejected, [self._timed_out(p) for p in rejected])
        return soonest

    def _execute(self, instance: int, batch: list[Pending]) -> None:
        """Run one batch on this thread; one loop wake-up delivers every request's rows (or the error)."""
        started = merged_at = ran_at = self._clock()
        live = [p for p in batch if not p.future.done()]  # a racy read is fine: delivery checks again
        try:
            if live:
                batched = self.policy.max_batch_size > 0
                rows, merged_at, ran_at = run_merged(
                    self.run, instance, live, batched=batched, clock=self._clock
                )
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
        split_at = self._clock()
        self._hand_back(deliver, live, rows)
        if self.observer is not None:  # after the hand-back: off the requests' critical path
            observe_batch(self.observer, self.name, live, started, merged_at, ran_at, split_at, self.version)

    def _answer_alone(self, instance: int, live: list[Pending], exc: Exception, started: float) -> None:
        """After a failed batch (begun at ``started``): each request's own answer
        (:func:`~serving.execution.batch_runs.run_one_by_one`), handed back in one wake-up; each that
        then succeeded is observed as the batch of one it ran in."""
        if len(live) > 1:
            answers, alone = run_one_by_one(self.run, instance, live, exc, self._clock)
        else:
            answers, alone = [exc], []
        self._ran()
        self._hand_back(settle, live, answers)
        if self.observer is not None:
            observe_alone(self.observer, self.name, alone, started, self.version)

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
