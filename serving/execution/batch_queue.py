"""The queued requests of a dynamic batcher under Triton's queue policy and priority levels: which of
them a queue timeout rejects or delays, in what order a batch takes them, and when it is due.

Triton's queue policy (``default_queue_policy``, :mod:`serving.execution.batch_policy`): how long a
request may wait in the queue, the config's default or its own ``timeout`` parameter where that may
shorten it, apart from its deadline (504), which is the server's limit or the client's shorter one. Past
its queue timeout, REJECT answers it UNAVAILABLE "Request timeout expired" (503) and never runs it; DELAY
keeps it queued behind every request still within its timeout. A request already in a batch is not
affected. Without a default timeout the hot path tests one number.

Triton's priority levels (``priority_levels``): the queue is kept in level order, a lower level first
(:func:`~serving.execution.batches.ranked_place`), so a batch takes the highest-priority requests
first and fills up with lower ones; each level has its own queue policy and its own bound. Without
levels (every exported config) a request is appended to the one queue.

Functions over a batcher's two queues, called with its lock held: ``queue`` (arrival order, or level
order with priority levels) and ``delayed`` (without levels, DELAY's timed-out requests, behind every
request in ``queue``). The lock, the threads and the answers stay in
:class:`serving.execution.batcher.DynamicBatcher`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from itertools import chain
from operator import attrgetter

from serving.execution.batch_policy import BatchPolicy
from serving.execution.batches import Pending, oldest_arrival, plan


def rejects_any(policy: BatchPolicy) -> bool:
    """Whether some request of this model may be rejected past its queue timeout (a timer to set)."""
    own = policy.priority_queue_policy.values() if policy.priority_levels else ()
    return any(p.rejects for p in (policy.default_queue_policy, *own))


def rejects_at(policy: BatchPolicy, pending: Pending) -> bool:
    """Whether ``pending``'s queue policy is REJECT (with levels, its own level's)."""
    return not policy.priority_levels or policy.queue_policy(pending.rank >> 1).rejects


def waiting(queue: deque[Pending], delayed: deque[Pending]) -> Iterable[Pending]:
    """The queued requests in the order a batch takes them: those within their queue timeout first."""
    return chain(queue, delayed) if delayed else queue


def due(policy: BatchPolicy, queue: deque[Pending], delayed: deque[Pending], now: float) -> tuple[int, float]:
    """How many queued requests the next batch takes (:func:`~serving.execution.batches.plan`) and how
    long before it leaves (0 or less: now), the queue delay running from the oldest it may hold."""
    first = queue[0] if queue else delayed[0]
    delay_s = policy.max_queue_delay_s
    oldest = first.arrival
    if delayed or policy.priority_levels:  # older requests may be behind the first (DELAY, levels)
        oldest = oldest_arrival(policy, first, waiting(queue, delayed))
    wait_s = oldest + delay_s - now
    overdue = wait_s <= 0 < delay_s  # Triton: past its delay, all that fit, not a preferred size
    take, ready = plan(policy, first, waiting(queue, delayed), overdue)
    return take, 0.0 if ready else wait_s


def take_batch(queue: deque[Pending], delayed: deque[Pending], count: int) -> list[Pending]:
    """The next batch of ``count`` requests off the queues: those within their queue timeout first."""
    if not delayed:
        return [queue.popleft() for _ in range(count)]
    batch = [queue.popleft() for _ in range(min(count, len(queue)))]
    return batch + [delayed.popleft() for _ in range(count - len(batch))]


def apply_timeouts(
    policy: BatchPolicy, queue: deque[Pending], delayed: deque[Pending], now: float
) -> tuple[float, list[Pending]]:
    """Triton's ``timeout_action`` on queued requests past their queue timeout: DELAY puts them behind
    every request still within its own (never to time out again), REJECT takes them off the queue.
    Returns when the next queued request times out, and the rejected ones, for the caller to answer."""
    soonest, expired = math.inf, []
    for pending in queue:
        expiry = pending.arrival + pending.queue_timeout_s
        if expiry <= now:
            expired.append(pending)
        elif expiry < soonest:
            soonest = expiry
    if not expired:
        return soonest, []
    if policy.priority_levels:
        return soonest, _apply_level_policies(policy, queue, expired, now)
    kept = [p for p in queue if p.arrival + p.queue_timeout_s > now]
    queue.clear()
    queue.extend(kept)
    if not policy.timeout_delays:
        return soonest, expired
    for pending in expired:
        pending.queue_timeout_s = math.inf
    delayed.extend(expired)
    return soonest, []


def _apply_level_policies(
    policy: BatchPolicy, queue: deque[Pending], expired: list[Pending], now: float
) -> list[Pending]:
    """:func:`apply_timeouts` with priority levels: each request past its queue timeout as its own
    level's policy says; a delayed one moves behind its level's requests still within theirs (and
    behind those delayed before it), ahead of every lower level's. Returns the rejected ones."""
    kept = [p for p in queue if p.arrival + p.queue_timeout_s > now]
    rejected = []
    for pending in expired:
        if policy.queue_policy(pending.rank >> 1).delays:
            pending.queue_timeout_s = math.inf
            pending.rank |= 1
            kept.append(pending)
        else:
            rejected.append(pending)
    kept.sort(key=attrgetter("rank"))  # stable: arrival order within a rank
    queue.clear()
    queue.extend(kept)
    return rejected
