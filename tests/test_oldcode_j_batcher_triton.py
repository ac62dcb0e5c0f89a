"""The dynamic batcher against Triton's own dynamic batcher: how a batch forms (a port of Triton's
``DynamicBatchScheduler::GetDynamicBatch`` compared with :func:`serving.execution.batch_queue.due`
over many queues), and a lone request that runs on the event loop only where Triton would not hold
it for the queue delay."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import deque

import pytest

from serving.execution.batch_policy import BatchPolicy
from serving.execution.batch_queue import due
from serving.execution.batcher import DynamicBatcher
from serving.execution.batches import Pending, sends_lone_item
from tests.test_batcher import Inline, Recorder, rows, run
from tests.waiting import DEADLINE_S


def triton_batch(policy: BatchPolicy, queue: deque[Pending], now: float) -> tuple[int, bool]:
    """Triton's ``GetDynamicBatch`` on a fresh cursor, one priority level, no payload pending: how many
    queued requests the next batch holds and whether it leaves now. Without preferred sizes Triton
    batches up to ``max_batch_size`` (its batcher guide)."""
    preferred = set(policy.preferred_batch_sizes) or {policy.max_batch_size}
    largest = max(preferred)
    pending, best, mark, send_now, count, oldest = 0, 0, 0, False, 0, queue[0].arrival
    for request in queue:
        size = max(1, request.items)
        if count:
            if pending + size > largest and not best:
                best, mark = pending, count
            if pending + size > policy.max_batch_size or request.signature != queue[0].signature:
                send_now = True
                break
        pending, count = pending + size, count + 1
        oldest = min(oldest, request.arrival)
        if pending in preferred:
            best, mark = pending, count
    delay = policy.max_queue_delay_s
    exceeded = delay != 0 and now - oldest >= delay
    if best and not exceeded:
        return mark, True
    return count, send_now or pending >= largest or exceeded or delay == 0


def test_batches_form_as_triton_forms_them_over_many_queues():
    rng = random.Random(20261206)
    for _ in range(20_000):
        largest = rng.randint(1, 10)
        preferred = tuple(sorted({rng.randint(1, largest) for _ in range(rng.randint(0, 3))}))
        policy = BatchPolicy(
            max_batch_size=largest,
            preferred_batch_sizes=preferred,
            max_queue_delay_s=rng.choice([0.0, 1.0]),
        )
        queue: deque[Pending] = deque()
        arrival = 0.0
        for _ in range(rng.randint(1, 6)):
            arrival += rng.choice([0.0, 0.3, 0.6])
            shape = (rng.random() < 0.1,)
            queue.append(Pending({}, rng.randint(1, largest), shape, None, arrival))  # type: ignore[arg-type]
        now = arrival + rng.choice([0.0, 0.5, 1.0, 2.0])
        take, wait_s = due(policy, queue, deque(), now)
        assert (take, wait_s <= 0) == triton_batch(policy, queue, now), (policy, queue, now)


@pytest.mark.parametrize(
    ("policy", "sends"),
    [
        (BatchPolicy(max_batch_size=8), True),  # no queue delay: Triton's default
        (BatchPolicy(max_batch_size=8, max_queue_delay_s=0.1), False),
        (BatchPolicy(max_batch_size=8, preferred_batch_sizes=(1, 4), max_queue_delay_s=0.1), True),
        (BatchPolicy(max_batch_size=8, preferred_batch_sizes=(4,), max_queue_delay_s=0.1), False),
        (BatchPolicy(max_batch_size=1, max_queue_delay_s=0.1), True),
        (BatchPolicy(max_batch_size=8, max_queue_delay_s=0.1, merge=False), True),
    ],
)
def test_a_lone_one_item_request_leaves_at_once_only_where_tritons_rule_sends_it(policy, sends):
    lone = Pending({}, 1, (), None, 0.0)  # type: ignore[arg-type]
    assert sends_lone_item(policy) is sends
    if policy.merge:  # without dynamic_batching Triton runs every request as it comes
        assert sends == triton_batch(policy, deque([lone]), 0.0)[1]


def test_a_lone_request_is_not_run_on_the_event_loop_where_the_queue_delay_would_hold_it():
    """With ``max_queue_delay_microseconds`` and a preferred size of 2, two one-item requests sent
    together leave as one batch of 2 (Triton); the owner's leave to run a lone request on the loop
    must not split them into two batches of 1."""
    model, inline = Recorder(), Inline()
    policy = BatchPolicy(max_batch_size=8, preferred_batch_sizes=(2,), max_queue_delay_s=DEADLINE_S)

    async def body():
        batcher = DynamicBatcher("m", model, policy, inline=inline)
        batcher.start()
        try:
            await asyncio.wait_for(
                asyncio.gather(batcher.submit(rows(0, 1)), batcher.submit(rows(1, 1))), DEADLINE_S
            )
        finally:
            await batcher.stop(grace_s=5)
        return threading.get_ident()

    loop_thread = run(body())
    assert model.sizes == [2] and loop_thread not in model.threads


def test_without_a_queue_delay_a_lone_request_still_runs_on_the_event_loop():
    model, inline = Recorder(), Inline()

    async def body():
        batcher = DynamicBatcher("m", model, BatchPolicy(max_batch_size=8), inline=inline)
        batcher.start()
        try:
            await batcher.submit(rows(0, 1))
        finally:
            await batcher.stop(grace_s=5)
        return threading.get_ident()

    assert model.threads == [run(body())] and inline.asked == [False]
