"""A per-model dynamic batcher with Triton's ``dynamic_batching`` semantics.

Requests wait in a bounded queue. One worker per model instance forms a batch: it takes queued
requests in order while their items fit ``max_batch_size`` and their non-batch shapes agree, sends it
at once when a preferred batch size (or ``max_batch_size``) is reached, and otherwise waits until the
oldest request has waited ``max_queue_delay``. The merged batch runs in a thread pool so the event
loop stays free, and each request gets exactly its own rows back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.errors import DeadlineExceeded, Overloaded, Unavailable

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]
RunFn = Callable[[int, Tensors], Tensors]  # (instance index, merged inputs) -> outputs


@dataclass(frozen=True)
class BatchPolicy:
    """How requests of one model are grouped (from its config.pbtxt)."""

    max_batch_size: int = 0  # 0: the model has no batch axis; every request runs alone
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0
    merge: bool = True  # False when the config has no dynamic_batching block
    max_queue_size: int = 128  # waiting requests beyond this are refused with 429
    instances: int = 1

    @classmethod
    def from_config(cls, config: Any, *, max_queue_size: int, instances: int) -> BatchPolicy:
        """Read ``max_batch_size`` and the ``dynamic_batching`` block of a Triton ModelConfig."""
        merge = config.HasField("dynamic_batching")
        batching = config.dynamic_batching
        queue_limit = batching.default_queue_policy.max_queue_size if merge else 0
        return cls(
            max_batch_size=int(config.max_batch_size),
            preferred_batch_sizes=tuple(sorted(int(s) for s in batching.preferred_batch_size)),
            max_queue_delay_s=batching.max_queue_delay_microseconds / 1e6,
            merge=merge and config.max_batch_size > 0,
            max_queue_size=min(queue_limit, max_queue_size) if queue_limit > 0 else max_queue_size,
            instances=max(1, instances),
        )


@dataclass(eq=False)
class _Pending:
    inputs: Tensors
    items: int
    signature: tuple
    future: asyncio.Future
    arrival: float = field(default_factory=time.monotonic)


class DynamicBatcher:
    """Queue, merge and run the requests of one model version."""

    def __init__(
        self,
        name: str,
        run: RunFn,
        policy: BatchPolicy,
        executor: Executor,
        *,
        observer: Any = None,
        retry_after_s: float = 1.0,
    ) -> None:
        self.name, self.run, self.policy, self.executor = name, run, policy, executor
        self.observer = observer  # GatewayMetrics-like: observe_queue / observe_batch / set_queue_depth
        self.retry_after_s = retry_after_s
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._form_lock = asyncio.Lock()
        self._workers: list[asyncio.Task] = []
        self._running = 0
        self._closing = False

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._worker(i)) for i in range(self.policy.instances)]

    async def stop(self, grace_s: float = 30.0) -> None:
        """Refuse new requests, finish queued and running ones (up to ``grace_s``), then stop workers."""
        self._closing = True
        deadline = time.monotonic() + grace_s
        while (self._queue or self._running) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(Unavailable(f"model {self.name!r} is shutting down"))
        self._queue.clear()

    async def submit(self, inputs: Tensors, timeout_s: float | None = None) -> Tensors:
        """Queue one request (already validated) and wait for its own output rows."""
        if self._closing:
            raise Unavailable(f"model {self.name!r} is shutting down", retry_after=self.retry_after_s)
        if len(self._queue) >= self.policy.max_queue_size:
            raise Overloaded(
                f"model {self.name!r}: queue is full ({self.policy.max_queue_size} requests waiting)",
                retry_after=self.retry_after_s,
            )
        pending = _Pending(
            inputs,
            _items(inputs, self.policy),
            _signature(inputs),
            asyncio.get_running_loop().create_future(),
        )
        self._queue.append(pending)
        self._report_depth()
        self._arrived.set()
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), timeout_s)
        except TimeoutError:
            pending.future.cancel()  # a queued request is dropped; a running one's rows are discarded
            self._discard_cancelled()
            raise DeadlineExceeded(f"model {self.name!r}: request timed out after {timeout_s:g} s") from None

    async def _worker(self, instance: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            async with self._form_lock:
                batch = await self._form_batch()
            self._running += 1
            try:
                await self._execute(loop, instance, batch)
            finally:
                self._running -= 1

    async def _form_batch(self) -> list[_Pending]:
        """Wait until a batch should be dispatched (Triton rules), then take it off the queue."""
        while True:
            self._discard_cancelled()
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            take, ready = self._plan()
            wait_s = self._queue[0].arrival + self.policy.max_queue_delay_s - time.monotonic()
            if ready or wait_s <= 0:
                return [self._queue.popleft() for _ in range(take)]
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), wait_s)

    def _plan(self) -> tuple[int, bool]:
        """How many queued requests the next batch takes, and whether it must leave now."""
        policy = self.policy
        if not policy.merge:
            return 1, True
        first, total, take, best_preferred = self._queue[0], 0, 0, 0
        for pending in self._queue:
            if pending.signature != first.signature or total + pending.items > policy.max_batch_size:
                return max(take, 1), True  # the next request cannot join: send what fits
            total, take = total + pending.items, take + 1
            if total in policy.preferred_batch_sizes:
                best_preferred = take
        if total >= policy.max_batch_size:
            return take, True
        if best_preferred:
            return best_preferred, True
        return take, False

    async def _execute(self, loop: asyncio.AbstractEventLoop, instance: int, batch: list[_Pending]) -> None:
        started = time.monotonic()
        self._report_depth()
        live = [p for p in batch if not p.future.done()]
        if not live:
            return
        merged = _merge([p.inputs for p in live], batched=self.policy.max_batch_size > 0)
        try:
            outputs = await loop.run_in_executor(self.executor, self.run, instance, merged)
        except Exception as exc:  # noqa: BLE001 - delivered to every waiting request
            log.exception("model %s: batch of %d request(s) failed", self.name, len(live))
            for pending in live:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        compute_s = time.monotonic() - started
        if self.observer is not None:
            self.observer.observe_batch(self.name, sum(p.items for p in live), compute_s)
            for pending in live:
                self.observer.observe_queue(self.name, started - pending.arrival)
        offset = 0
        for pending in live:
            rows = (
                {k: v[offset : offset + pending.items] for k, v in outputs.items()}
                if len(live) > 1
                else outputs
            )
            offset += pending.items
            if not pending.future.done():
                pending.future.set_result(rows)

    def _discard_cancelled(self) -> None:
        if any(p.future.done() for p in self._queue):
            self._queue = deque(p for p in self._queue if not p.future.done())
            self._report_depth()

    def _report_depth(self) -> None:
        if self.observer is not None:
            self.observer.set_queue_depth(self.name, len(self._queue))


def _items(inputs: Tensors, policy: BatchPolicy) -> int:
    """Batch items in a request: the size of axis 0 of its inputs (1 for non-batching models)."""
    if policy.max_batch_size <= 0 or not inputs:
        return 1
    return int(next(iter(inputs.values())).shape[0])


def _signature(inputs: Tensors) -> tuple:
    """Requests merge only when names, dtypes and non-batch shapes agree."""
    return tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in inputs.items()))


def _merge(requests: list[Tensors], *, batched: bool) -> Tensors:
    if len(requests) == 1 or not batched:
        return requests[0]
    return {name: np.concatenate([r[name] for r in requests], axis=0) for name in requests[0]}
