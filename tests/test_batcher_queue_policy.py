"""The dynamic batcher honours Triton's queue policy: a request's queue timeout (the config's default,
shortened by the request's own where ``allow_timeout_override``), and what happens when it passes
(REJECT: answered UNAVAILABLE "Request timeout expired", never run; DELAY: it yields to the requests
still within theirs). Requests already in a running batch are never affected."""

from __future__ import annotations

import asyncio
import threading

import pytest

from serving.errors import DeadlineExceeded, Overloaded, Unavailable
from serving.execution.batch_policy import BatchPolicy
from serving.execution.batcher import DynamicBatcher
from tests.test_batcher import Recorder, busy_instance, rows, run, with_batcher
from tests.waiting import DEADLINE_S, until


class Clock:
    """A monotonic clock the test moves: the batcher's view of how long requests have waited."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def with_clock(policy: BatchPolicy, model, clock: Clock, body):
    batcher = DynamicBatcher("m", model, policy, clock=clock)
    batcher.start()
    try:
        return await body(batcher)
    finally:
        await batcher.stop(grace_s=5)


def test_the_queue_policy_is_read_from_the_config_default_queue_policy():
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    def policy(text: str) -> BatchPolicy:
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
        return BatchPolicy.from_config(config, max_queue_size=100, instances=1)

    delayed = policy(
        "max_batch_size: 8 dynamic_batching { default_queue_policy { timeout_action: DELAY "
        "default_timeout_microseconds: 250000 allow_timeout_override: true max_queue_size: 5 } }"
    )
    assert (delayed.queue_timeout_s, delayed.timeout_delays, delayed.allow_timeout_override) == (
        0.25,
        True,
        True,
    )
    assert delayed.max_queue_size == 5
    rejected = policy(
        "max_batch_size: 8 dynamic_batching { default_queue_policy { default_timeout_microseconds: 7 } }"
    )
    assert (rejected.queue_timeout_s, rejected.timeout_delays, rejected.allow_timeout_override) == (
        7e-6,
        False,
        False,
    )
    plain = policy("max_batch_size: 8 dynamic_batching { }")
    assert plain.queue_timeout_s == 0.0 and not plain.timeout_delays and not plain.allow_timeout_override


def test_a_request_queued_past_its_timeout_is_answered_unavailable_and_never_runs():
    gate = threading.Event()
    model = Recorder(gate)
    policy = BatchPolicy(max_batch_size=8, queue_timeout_s=0.05)

    async def body(batcher):
        running = await busy_instance(batcher, model)  # in its batch when its own timeout passes
        with pytest.raises(Unavailable, match="Request timeout expired") as info:
            await batcher.submit(rows(1, 1))
        assert info.value.status == 503 and info.value.retry_after == 1.0
        assert batcher.queue_depth == 0
        gate.set()
        return await running

    assert run(with_batcher(policy, model, body))["y"].tolist() == [[0.0]]
    assert model.sizes == [1]  # the rejected request never ran; the running one was not affected


def test_a_timed_out_request_the_instance_finds_in_the_queue_is_rejected_not_run():
    gate, clock = threading.Event(), Clock()
    model = Recorder(gate)
    policy = BatchPolicy(max_batch_size=8, queue_timeout_s=60.0)

    async def body(batcher):
        running = await busy_instance(batcher, model)
        late = asyncio.create_task(batcher.submit(rows(1, 1)))
        await until(lambda: batcher.queue_depth == 1)
        clock.now += 61.0  # it has waited past its timeout while the instance was busy
        fresh = asyncio.create_task(batcher.submit(rows(2, 1)))
        await until(lambda: batcher.queue_depth == 2)
        gate.set()
        with pytest.raises(Unavailable, match="Request timeout expired"):
            await late
        return [(await t)["y"].tolist() for t in (running, fresh)]

    assert run(with_clock(policy, model, clock, body)) == [[[0.0]], [[4.0]]]
    assert model.ran == [0.0, 2.0]


def test_with_delay_a_timed_out_request_runs_after_those_still_within_their_timeout():
    gate, clock = threading.Event(), Clock()
    model = Recorder(gate)
    policy = BatchPolicy(max_batch_size=1, queue_timeout_s=1.0, timeout_delays=True)

    async def body(batcher):
        running = await busy_instance(batcher, model)
        late = asyncio.create_task(batcher.submit(rows(1, 1)))
        await until(lambda: batcher.queue_depth == 1)
        clock.now += 5.0  # past its timeout: it now yields to requests that are within theirs
        fresh = [asyncio.create_task(batcher.submit(rows(i, 1))) for i in (2, 3)]
        await until(lambda: batcher.queue_depth == 3)
        gate.set()
        answers = await asyncio.wait_for(asyncio.gather(running, late, *fresh), DEADLINE_S)
        return [a["y"].tolist() for a in answers]

    assert run(with_clock(policy, model, clock, body)) == [[[0.0]], [[2.0]], [[4.0]], [[6.0]]]
    assert model.ran == [0.0, 2.0, 3.0, 1.0]  # delayed, not dropped: it ran once the others had


def test_a_delayed_request_counts_against_the_queue_size_and_joins_a_batch_behind_the_others():
    clock, model = Clock(), Recorder()
    policy = BatchPolicy(
        max_batch_size=4, max_queue_delay_s=60.0, queue_timeout_s=1.0, timeout_delays=True, max_queue_size=2
    )

    async def body(batcher):
        late = asyncio.create_task(batcher.submit(rows(1, 1)))  # waits for the batch to fill
        await until(lambda: batcher.queue_depth == 1)
        clock.now += 5.0
        fresh = asyncio.create_task(batcher.submit(rows(2, 1)))  # wakes the instance: it delays the first
        await until(lambda: len(batcher._delayed) == 1)
        with pytest.raises(Overloaded):
            await batcher.submit(rows(3, 1))
        stopping = asyncio.create_task(batcher.stop(grace_s=DEADLINE_S))  # sends the batch as it is
        answers = await asyncio.wait_for(asyncio.gather(late, fresh), DEADLINE_S)
        await stopping
        return [a["y"].tolist() for a in answers]

    assert run(with_clock(policy, model, clock, body)) == [[[2.0]], [[4.0]]]
    assert model.ran == [2.0, 1.0] and model.sizes == [2]


async def queued_outcome(
    policy: BatchPolicy, timeout_s: float, own_timeout_s: float | None
) -> type[Exception]:
    """How a request queued behind a busy instance ends: its deadline ``timeout_s`` (504) or its queue
    timeout (503), given its own ``timeout`` parameter ``own_timeout_s``."""
    gate = threading.Event()
    model = Recorder(gate)

    async def body(batcher):
        running = await busy_instance(batcher, model)
        try:
            with pytest.raises((Unavailable, DeadlineExceeded)) as info:
                await batcher.submit(rows(1, 1), timeout_s=timeout_s, own_timeout_s=own_timeout_s)
            return info.type
        finally:
            gate.set()
            await running

    return await with_batcher(policy, model, body)


def test_a_request_timeout_shortens_the_queue_timeout_only_where_the_config_allows_it():
    def outcome(policy: BatchPolicy, timeout_s: float) -> type[Exception]:
        return run(queued_outcome(policy, timeout_s, own_timeout_s=timeout_s))

    allowed = BatchPolicy(max_batch_size=8, queue_timeout_s=60.0, allow_timeout_override=True)
    assert outcome(allowed, 0.05) is Unavailable  # its own 50 ms replaced the default minute
    refused = BatchPolicy(max_batch_size=8, queue_timeout_s=60.0)
    assert outcome(refused, 0.05) is DeadlineExceeded  # only its deadline ended it
    never_longer = BatchPolicy(max_batch_size=8, queue_timeout_s=0.05, allow_timeout_override=True)
    assert outcome(never_longer, 60.0) is Unavailable  # a request may not lengthen the default
    no_default = BatchPolicy(max_batch_size=8, allow_timeout_override=True)
    assert outcome(no_default, 0.05) is DeadlineExceeded  # no default timeout: none to shorten


def test_a_deadline_that_is_not_the_requests_own_timeout_never_shortens_the_queue_timeout():
    """The server's default deadline or a gRPC deadline is no request ``timeout`` parameter: with
    ``allow_timeout_override`` it still ends the request at its deadline (504), not as a queue timeout
    (503, the override Triton gives the parameter alone)."""
    allowed = BatchPolicy(max_batch_size=8, queue_timeout_s=60.0, allow_timeout_override=True)
    assert run(queued_outcome(allowed, 0.05, own_timeout_s=None)) is DeadlineExceeded
    assert run(queued_outcome(allowed, 0.05, own_timeout_s=120.0)) is DeadlineExceeded


def test_the_policy_gives_the_queue_wait_triton_gives_a_request():
    allowed = BatchPolicy(max_batch_size=8, queue_timeout_s=1.0, allow_timeout_override=True)
    assert [allowed.queue_wait(t) for t in (None, 0.25, 5.0, 0.0)] == [1.0, 0.25, 1.0, 1.0]
    assert BatchPolicy(max_batch_size=8, queue_timeout_s=1.0).queue_wait(0.25) == 1.0
