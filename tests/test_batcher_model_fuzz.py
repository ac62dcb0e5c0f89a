"""The dynamic batcher driven through random scenarios and checked against a reference of the documented
semantics (Triton's ``GetDynamicBatch`` and ``default_queue_policy``, docs/kiln-json.md, README).

The fake model holds every call until the scenario releases it (or fails it), and the batcher's clock is
the scenario's: nothing waits on time. After each step the test waits until every instance thread is
either inside the model or parked on the batcher's condition, then checks that no parked instance leaves
a due batch in the queue. At the end every request must have been answered exactly once: its own rows in
order, its own error, the queue-full refusal or the queue-timeout refusal; no batch passed
``max_batch_size``, mixed shapes or split a request; batches were taken in arrival order; and the queue
depth and the count of running batches are back to zero.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.errors import Overloaded, Unavailable
from serving.execution.batch_policy import BatchPolicy
from serving.execution.batcher import DynamicBatcher
from tests.test_batcher import Observer
from tests.waiting import DEADLINE_S, until

FUZZ = settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ROWS_PER_ID = 16  # a request's rows hold id * 16 + row: any batch tells whose rows it holds
# Fake seconds: queue delays and timeouts far beyond any real timer the batcher also sets on them (the
# REJECT timer, a request's own timeout), so only the scenario's clock ever lets them pass.
DELAY_S, QUEUE_TIMEOUT_S = 1000.0, 3000.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Call:
    """One run of the model: the instance, the rows it held, and what the scenario lets it do."""

    instance: int
    values: list[float]
    wide: bool
    release: threading.Event = field(default_factory=threading.Event)
    fail: bool = False  # the scenario's own failure of this run (a broken session, not a request's)
    failed: bool = False  # the run raised (the scenario's failure or a poisoned request's)

    @property
    def ids(self) -> list[int]:
        return [int(v) // ROWS_PER_ID for v in self.values]

    def requests(self) -> list[int]:
        return list(dict.fromkeys(self.ids))


class HeldModel:
    """Doubles its input; each call waits until the scenario releases it (every call passes once
    ``open``). A call holding a poisoned request's rows raises, as ONNX Runtime refuses a bad value."""

    def __init__(self, poisoned: set[int]) -> None:
        self.calls: list[Call] = []
        self.poisoned = poisoned
        self._open = False
        self._lock = threading.Lock()

    def __call__(self, instance: int, inputs: dict) -> dict:
        x = inputs["x"]
        call = Call(instance, [float(v) for v in x[:, 0]], x.shape[1] == 2)
        with self._lock:
            self.calls.append(call)
            if self._open:
                call.release.set()
        assert call.release.wait(DEADLINE_S), "a model call was never released"
        if call.fail:
            call.failed = True
            raise RuntimeError("the session broke")
        if any(i in self.poisoned for i in call.ids):
            call.failed = True
            raise ValueError("a poisoned request's value")
        return {"y": x * 2}

    def held(self) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if not c.release.is_set()]

    def open(self) -> None:
        """Release every call, and let every later one through."""
        with self._lock:
            self._open = True
            for call in self.calls:
                call.release.set()


@dataclass
class Request:
    id: int
    items: int
    wide: bool
    arrival: float
    queue_timeout_s: float
    depth_before: int  # the queue depth it found
    task: asyncio.Task | None = None

    def inputs(self) -> dict:
        values = np.arange(self.items, dtype=np.float32) + self.id * ROWS_PER_ID
        return {"x": np.repeat(values[:, None], 2 if self.wide else 1, axis=1)}


policies = st.builds(
    dict,
    max_batch_size=st.integers(1, 6),
    preferred=st.lists(st.integers(1, 6), max_size=2, unique=True),
    delayed=st.booleans(),
    instances=st.integers(1, 3),
    max_queue_size=st.integers(1, 8),
    timeout=st.sampled_from(["none", "reject", "delay"]),
    override=st.booleans(),
)
steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("submit"),
            st.integers(1, 6),
            st.booleans(),
            st.booleans(),
            st.sampled_from([None, QUEUE_TIMEOUT_S / 3]),
        ),
        st.tuples(st.just("release"), st.integers(0, 5), st.booleans()),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
        st.tuples(st.just("advance"), st.sampled_from([DELAY_S / 2, DELAY_S, QUEUE_TIMEOUT_S / 2])),
    ),
    min_size=1,
    max_size=25,
)


def make_policy(drawn: dict) -> BatchPolicy:
    mbs = drawn["max_batch_size"]
    timeout = drawn["timeout"]
    return BatchPolicy(
        max_batch_size=mbs,
        preferred_batch_sizes=tuple(sorted(s for s in drawn["preferred"] if s <= mbs)),
        max_queue_delay_s=DELAY_S if drawn["delayed"] else 0.0,
        max_queue_size=drawn["max_queue_size"],
        instances=drawn["instances"],
        queue_timeout_s=0.0 if timeout == "none" else QUEUE_TIMEOUT_S,
        timeout_delays=timeout == "delay",
        # a DELAY queue keeps its timed-out requests in the order they expire: with one timeout for all,
        # arrival order, which the reference below assumes
        allow_timeout_override=drawn["override"] and timeout == "reject",
    )


def due(policy: BatchPolicy, queue: list[Request], now: float) -> bool:
    """Whether an idle instance must take a batch from ``queue`` now (Triton's ``GetDynamicBatch``): the
    requests that fit ``max_batch_size`` and share the first one's shapes make a preferred size, reach
    the largest preferred size (``max_batch_size`` without any), are stopped by one that cannot join, or
    the oldest of them has waited the queue delay (always, without a delay)."""
    if not queue:
        return False
    if not policy.merge or policy.max_queue_delay_s == 0:
        return True
    preferred = set(policy.preferred_batch_sizes)
    cap = max(preferred, default=policy.max_batch_size)
    members: list[Request] = []
    total, best, stopped = 0, 0, False
    for request in queue:
        if members:
            if total + request.items > cap and not best:
                best = total
            if request.wide != members[0].wide or total + request.items > policy.max_batch_size:
                stopped = True
                break
        members.append(request)
        total += request.items
        if total in preferred:
            best = total
    overdue = now - min(r.arrival for r in members) >= policy.max_queue_delay_s
    return bool(best) or stopped or total >= cap or overdue


def waiting(policy: BatchPolicy, requests: list[Request], model: HeldModel, now: float) -> list[Request]:
    """The requests still queued, in the order the batcher examines them: those within their queue
    timeout, then (DELAY) those past it."""
    entered = {i for call in model.calls for i in call.ids}
    queued = [r for r in requests if r.task is not None and not r.task.done() and r.id not in entered]
    if not policy.timeout_delays:
        return queued
    late = [r for r in queued if now >= r.arrival + r.queue_timeout_s]
    return [r for r in queued if r not in late] + late


def parked(batcher: DynamicBatcher) -> int:
    """Instance threads waiting on the batcher's condition (a notified one no longer counts)."""
    return len(batcher._ready._waiters)  # noqa: SLF001 - the only view of a thread parked there


async def settled(batcher: DynamicBatcher, model: HeldModel, instances: int) -> None:
    """Every instance thread parked or inside a held model call, and their answers delivered."""
    await until(lambda: parked(batcher) + len(model.held()) == instances)
    for _ in range(3):  # the hand-backs scheduled before the threads parked, then the tasks they wake
        await asyncio.sleep(0)


def wake(batcher: DynamicBatcher) -> None:
    """What the end of an instance's timed wait does once the scenario's clock moved past it."""
    with batcher._ready:  # noqa: SLF001
        batcher._ready.notify_all()  # noqa: SLF001


async def scenario(policy: BatchPolicy, actions: list[tuple]) -> tuple:
    clock, poisoned, observer = Clock(), set(), Observer()
    depth: list = []
    observer.watch_queue_depth = lambda name, read: depth.append(read)
    model = HeldModel(poisoned)
    batcher = DynamicBatcher("m", model, policy, observer=observer, clock=clock)
    batcher.start()
    requests: list[Request] = []
    try:
        for action in actions:
            await step(batcher, model, policy, clock, requests, poisoned, action)
            await settled(batcher, model, policy.instances)
            queue = waiting(policy, requests, model, clock.now)
            assert batcher.queue_depth == len(queue)
            if parked(batcher):
                assert not due(policy, queue, clock.now), (
                    f"an instance is idle while a batch is due: {[(r.id, r.items, r.wide) for r in queue]}"
                )
        model.open()
        clock.now += DELAY_S  # every request still queued is past its queue delay
        wake(batcher)
        tasks = [r.task for r in requests if r.task is not None]
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), DEADLINE_S)
        await until(lambda: batcher._running == 0)  # noqa: SLF001 - the batches' own count
        return requests, model, batcher.queue_depth, depth[0](), clock.now
    finally:
        model.open()
        await batcher.stop(grace_s=DEADLINE_S)


async def step(batcher, model, policy, clock, requests, poisoned, action) -> None:
    kind = action[0]
    if kind == "submit":
        _, items, wide, poison, own = action
        rid = len(requests)
        items = min(items, policy.max_batch_size)
        request = Request(rid, items, wide, clock.now, policy.queue_wait(own), batcher.queue_depth)
        if poison:
            poisoned.add(rid)
        request.task = asyncio.create_task(batcher.submit(request.inputs(), own_timeout_s=own))
        requests.append(request)
        await asyncio.sleep(0)  # the task runs up to its wait: queued, refused or running
    elif kind == "release":
        _, index, fail = action
        held = model.held()
        if held:
            call = held[index % len(held)]
            call.fail = fail
            call.release.set()
    elif kind == "cancel":
        live = [r for r in requests if r.task is not None and not r.task.done()]
        if live:
            live[action[1] % len(live)].task.cancel()
    else:
        clock.now += action[1]
        wake(batcher)


def check_answers(policy: BatchPolicy, requests: list[Request], model: HeldModel, end: float) -> None:
    """Each request answered once, with its own rows, its own error or a documented refusal."""
    broken = {i for call in model.calls if call.fail for i in call.requests()}
    for r in requests:
        assert r.task.done()
        if r.task.cancelled():
            continue
        error = r.task.exception()
        if error is None:
            assert r.id not in model.poisoned
            np.testing.assert_array_equal(r.task.result()["y"], r.inputs()["x"] * 2)
        elif isinstance(error, Overloaded):
            assert r.depth_before >= policy.max_queue_size, f"request {r.id} refused below the queue size"
        elif isinstance(error, Unavailable):
            assert policy.queue_timeout_s and not policy.timeout_delays
            assert end >= r.arrival + r.queue_timeout_s, f"request {r.id} rejected before its queue timeout"
        elif isinstance(error, RuntimeError):
            assert r.id in broken, f"request {r.id} failed by another request's batch: {error}"
        else:
            assert isinstance(error, ValueError) and r.id in model.poisoned, f"request {r.id}: {error!r}"
    accepted = [r for r in requests if not isinstance(_error(r), Overloaded)]
    for r in requests:
        if r.depth_before < policy.max_queue_size:
            assert r in accepted, f"request {r.id} refused with {r.depth_before} queued"


def _error(request: Request) -> BaseException | None:
    return None if request.task.cancelled() else request.task.exception()


def check_batches(policy: BatchPolicy, requests: list[Request], model: HeldModel) -> None:
    """No batch passes ``max_batch_size``, mixes shapes or splits a request; a request runs in one batch,
    then alone only after that batch failed; batches are taken in arrival order (DELAY aside)."""
    by_id = {r.id: r for r in requests}
    seen: dict[int, Call] = {}
    merged: list[list[int]] = []
    for call in model.calls:
        assert len(call.values) <= policy.max_batch_size
        ids = call.requests()
        assert all(by_id[i].wide == call.wide for i in ids)
        expected = [v for i in ids for v in by_id[i].inputs()["x"][:, 0]]
        assert call.values == expected, "a request's rows were split, reordered or mixed"
        again = [i for i in ids if i in seen]
        if again:
            assert ids == again and len(ids) == 1, "a request ran in two batches"
            first = seen[ids[0]]
            assert first.failed and len(first.requests()) > 1, "a request ran again after its batch ran"
            continue
        seen.update((i, call) for i in ids)
        merged.append(ids)
    assert all(ids == sorted(ids) for ids in merged)
    if not policy.timeout_delays:
        merged.sort()
        for earlier, later in zip(merged, merged[1:], strict=False):
            assert earlier[-1] < later[0], f"batches {earlier} and {later} broke arrival order"


@FUZZ
@given(drawn=policies, actions=steps)
def test_the_batcher_answers_every_request_once_as_tritons_dynamic_batcher_would(drawn, actions):
    policy = make_policy(drawn)
    requests, model, depth, gauge, end = asyncio.run(scenario(policy, actions))
    check_answers(policy, requests, model, end)
    check_batches(policy, requests, model)
    assert depth == 0 and gauge == 0


def test_an_idle_instance_takes_a_due_batch_that_another_instance_left_in_the_queue():
    """Two instances: one waits out the delay of a lone item; a two-item request arrives that cannot
    join it (max_batch_size 2), so the waiting instance sends the lone item and the full request is
    due at once. The other instance, idle, must take it rather than leave it until the first is done."""
    policy = BatchPolicy(max_batch_size=2, max_queue_delay_s=DELAY_S, instances=2)
    actions = [("submit", 1, False, False, None), ("submit", 2, False, False, None)]
    requests, model, *_ = asyncio.run(scenario(policy, actions))
    assert [c.requests() for c in model.calls][:2] == [[0], [1]]
    assert all(c.instance != model.calls[0].instance for c in model.calls[1:2])


def test_a_batch_holding_a_delayed_request_leaves_once_that_request_has_waited_the_queue_delay():
    """DELAY: a request past its queue timeout yields to newer ones, but it stays the oldest request of
    the batch it joins: that batch is due at the oldest request's queue delay (Triton's
    ``OldestEnqueueTime``), not the newest's, or a queued request waits past its delay."""
    policy = BatchPolicy(
        max_batch_size=4, max_queue_delay_s=DELAY_S, queue_timeout_s=0.4 * DELAY_S, timeout_delays=True
    )
    actions = [
        ("submit", 1, False, False, None),
        ("advance", 0.7 * DELAY_S),  # the first is now delayed
        ("submit", 1, False, False, None),  # the newer one leads the batch (in its timeout until 1.1)
        ("advance", 0.3 * DELAY_S),  # the first has waited its queue delay: due now
    ]
    requests, model, *_ = asyncio.run(scenario(policy, actions))
    assert [c.requests() for c in model.calls] == [[1, 0]]


@pytest.mark.parametrize("fails", ["session", "poison"])
def test_a_failed_batch_answers_each_request_alone_and_the_queue_empties(fails):
    """A merged batch that fails (the session, or one request's value) runs each request again alone:
    the others get their rows, and nothing is left queued or counted as running."""
    policy = BatchPolicy(max_batch_size=4, instances=1)
    actions = [
        ("submit", 1, False, False, None),  # runs at once and holds the instance
        ("submit", 1, False, fails == "poison", None),
        ("submit", 2, False, False, None),
        ("release", 0, False),
        ("release", 0, fails == "session"),  # the merged batch of the two queued requests
    ]
    requests, model, depth, gauge, _ = asyncio.run(scenario(policy, actions))
    check_answers(policy, requests, model, 0.0)
    check_batches(policy, requests, model)
    assert [c.requests() for c in model.calls] == [[0], [1, 2], [1], [2]]
    assert _error(requests[2]) is None and depth == 0 and gauge == 0


def test_a_queue_delay_or_idle_release_beyond_what_a_thread_can_wait_still_serves():
    """``max_queue_delay_microseconds`` is a uint64 and ``--batch-release-idle-s`` any float: a wait
    longer than ``threading.TIMEOUT_MAX`` raised in the instance's thread, which died, and every later
    request of the model hung. Such a wait is forever: the batch leaves at its preferred size."""
    policy = BatchPolicy(max_batch_size=4, preferred_batch_sizes=(2,), max_queue_delay_s=1e10)
    ran: list[int] = []

    def model(instance: int, inputs: dict) -> dict:
        ran.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}

    async def body() -> list:
        batcher = DynamicBatcher("m", model, policy, release=lambda i: None, release_idle_s=1e10)
        batcher.start()
        (thread,) = batcher._threads  # noqa: SLF001
        try:
            one = Request(0, 1, False, 0.0, 0.0, 0).inputs()
            first = asyncio.create_task(batcher.submit(one))
            await until(lambda: batcher.queue_depth == 1)
            await until(lambda: parked(batcher) == 1 or not thread.is_alive())
            assert thread.is_alive() and batcher.queue_depth == 1  # waiting for a second item
            answers = [await asyncio.wait_for(asyncio.gather(first, batcher.submit(one)), DEADLINE_S)]
            await until(lambda: parked(batcher) == 1 or not thread.is_alive())  # idle after a merged batch
            assert thread.is_alive()
            both = asyncio.gather(batcher.submit(one), batcher.submit(one))
            answers.append(await asyncio.wait_for(both, DEADLINE_S))
            return [[a["y"].tolist() for a in pair] for pair in answers]
        finally:
            await batcher.stop(grace_s=DEADLINE_S)

    assert asyncio.run(body()) == [[[[0.0]], [[0.0]]]] * 2
    assert ran == [2, 2]
