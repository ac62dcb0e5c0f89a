"""The dynamic batcher honours Triton's priority levels (``dynamic_batching { priority_levels: N
default_priority_level: D priority_queue_policy {...} }``): a request's ``priority`` parameter picks its
level (0, absent or past the last level: the default one, as Triton's ``InferenceRequest::SetPriority``),
a lower level is served first, a batch takes the highest-priority requests first and fills up with lower
ones, and each level has its own queue policy (timeout, REJECT / DELAY, ``max_queue_size``).

And a merged batch that fails runs again request by request only for the requests whose callers still
wait: one that left (cancelled, past its deadline) is not run again, nor observed."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2, service_pb2

from serving.errors import DeadlineExceeded, Overloaded, Unavailable
from serving.execution.base import InferRequest
from serving.execution.batch_policy import BatchPolicy, QueuePolicy
from serving.execution.batcher import DynamicBatcher
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.ort_options import OrtOptions
from serving.execution.repository import Repository
from serving.protocol.v2_codec import parse_infer
from tests.test_batcher import Observer, Recorder, busy_instance, rows, run, with_batcher
from tests.test_batcher_queue_policy import Clock, with_clock
from tests.test_execution_errors import embedding_repository
from tests.test_request_deadlines import Gate
from tests.waiting import DEADLINE_S, until

MINUTE_S = 60.0  # a queue timeout no real timer reaches in a test: only a test's own clock passes it


def config_policy(batching: str, max_queue_size: int = 100) -> BatchPolicy:
    config = text_format.Parse(
        f"max_batch_size: 8 dynamic_batching {{ {batching} }}", model_config_pb2.ModelConfig()
    )
    return BatchPolicy.from_config(config, max_queue_size=max_queue_size, instances=1)


async def queued_behind(batcher: DynamicBatcher, model: Recorder, priorities: list[int], **submit) -> list:
    """Hold the instance busy, queue one one-item request per priority (request ``i`` holds the value
    ``i + 1``), let the instance go and return every answer, in submission order."""
    running = await busy_instance(batcher, model)
    tasks = []
    for i, priority in enumerate(priorities):
        tasks.append(asyncio.create_task(batcher.submit(rows(i + 1, 1), priority=priority, **submit)))
        await until(lambda n=i + 1: batcher.queue_depth == n)
    model.gate.set()
    answers = await asyncio.wait_for(asyncio.gather(running, *tasks, return_exceptions=True), DEADLINE_S)
    return answers[1:]


def test_the_priority_levels_and_each_levels_queue_policy_are_read_from_the_config():
    policy = config_policy(
        "priority_levels: 3 default_priority_level: 2 "
        "default_queue_policy { max_queue_size: 4 default_timeout_microseconds: 5000000 } "
        "priority_queue_policy { key: 1 value { timeout_action: DELAY default_timeout_microseconds: 250000 "
        "allow_timeout_override: true max_queue_size: 2 } }",
        max_queue_size=100,
    )
    assert (policy.priority_levels, policy.default_priority_level) == (3, 2)
    assert policy.queue_policy(1) == QueuePolicy(0.25, delays=True, allow_timeout_override=True, max_size=2)
    assert policy.queue_policy(2) == policy.queue_policy(3) == QueuePolicy(5.0, max_size=4)
    assert policy.max_queue_size == 100  # the default policy's 4 bounds each level, not all of them
    assert [policy.level(p) for p in (0, 1, 2, 3, 4, (1 << 64) - 1)] == [2, 1, 2, 3, 2, 2]
    plain = config_policy("default_queue_policy { max_queue_size: 4 }")
    assert plain.priority_levels == 0 and plain.max_queue_size == 4 and plain.level(1) == 0


def test_a_higher_priority_request_queued_later_runs_first():
    model = Recorder(threading.Event())
    policy = BatchPolicy(max_batch_size=1, priority_levels=2, default_priority_level=2)
    answers = run(with_batcher(policy, model, lambda b: queued_behind(b, model, [2, 2, 1])))
    assert [a["y"].tolist() for a in answers] == [[[2.0]], [[4.0]], [[6.0]]]  # each its own rows
    assert model.ran == [0.0, 3.0, 1.0, 2.0]  # the priority 1 request first, then the others in order


def test_priority_zero_or_past_the_last_level_is_the_default_level_served_in_arrival_order():
    model = Recorder(threading.Event())
    policy = BatchPolicy(max_batch_size=1, priority_levels=3, default_priority_level=2)
    run(with_batcher(policy, model, lambda b: queued_behind(b, model, [3, 0, 7, 2, 1])))
    assert model.ran == [0.0, 5.0, 2.0, 3.0, 4.0, 1.0]  # level 1; level 2 as they came (0, 7, 2); level 3


def test_without_priority_levels_a_priority_changes_nothing():
    model = Recorder(threading.Event())
    policy = BatchPolicy(max_batch_size=1)
    run(with_batcher(policy, model, lambda b: queued_behind(b, model, [5, 1, 3])))
    assert model.ran == [0.0, 1.0, 2.0, 3.0]


def test_a_batch_takes_the_highest_priority_requests_first_and_fills_up_with_lower_ones():
    model = Recorder(threading.Event())
    policy = BatchPolicy(max_batch_size=3, priority_levels=2, default_priority_level=1)
    run(with_batcher(policy, model, lambda b: queued_behind(b, model, [2, 2, 1, 1])))
    assert model.sizes == [1, 3, 1]
    assert model.ran == [0.0, 3.0, 4.0, 1.0, 2.0]


def test_each_level_is_bounded_by_its_own_queue_size_and_all_of_them_by_the_models():
    model = Recorder(threading.Event())
    policy = BatchPolicy(
        max_batch_size=1,
        max_queue_size=4,
        priority_levels=2,
        default_priority_level=2,
        level_queue_size=1,  # default_queue_policy's, level 2's
        priority_queue_policy={1: QueuePolicy(max_size=3)},
    )

    async def body(batcher):
        running = await busy_instance(batcher, model)
        kept = [asyncio.create_task(batcher.submit(rows(1, 1)))]
        await until(lambda: batcher.queue_depth == 1)
        with pytest.raises(Overloaded, match="1 requests waiting at priority level 2"):
            await batcher.submit(rows(2, 1), priority=2)
        for n in range(3):
            kept.append(asyncio.create_task(batcher.submit(rows(3 + n, 1), priority=1)))
            await until(lambda n=n: batcher.queue_depth == 2 + n)
        with pytest.raises(Overloaded, match=r"queue is full \(4 requests waiting\)"):
            await batcher.submit(rows(9, 1), priority=1)
        model.gate.set()
        await asyncio.wait_for(asyncio.gather(running, *kept), DEADLINE_S)

    run(with_batcher(policy, model, body))
    assert model.ran == [0.0, 3.0, 4.0, 5.0, 1.0]


def test_each_level_times_out_under_its_own_queue_policy():
    """Level 1 REJECTs a request past its queue timeout; level 2 (the default policy) DELAYs it behind
    the level's requests still within theirs, yet ahead of every lower level's."""
    clock, model = Clock(), Recorder(threading.Event())
    policy = BatchPolicy(
        max_batch_size=1,
        priority_levels=3,
        default_priority_level=2,
        queue_timeout_s=MINUTE_S,
        timeout_delays=True,
        priority_queue_policy={1: QueuePolicy(MINUTE_S), 3: QueuePolicy()},
    )

    async def body(batcher):
        running = await busy_instance(batcher, model)
        late = [asyncio.create_task(batcher.submit(rows(v, 1), priority=p)) for v, p in ((1, 1), (2, 2))]
        await until(lambda: batcher.queue_depth == 2)
        clock.now += 2 * MINUTE_S  # both past their queue timeout
        fresh = [asyncio.create_task(batcher.submit(rows(v, 1), priority=p)) for v, p in ((3, 3), (4, 2))]
        await until(lambda: batcher.queue_depth == 4)
        model.gate.set()
        with pytest.raises(Unavailable, match="Request timeout expired"):
            await asyncio.wait_for(late[0], DEADLINE_S)
        return await asyncio.wait_for(asyncio.gather(running, late[1], *fresh), DEADLINE_S)

    run(with_clock(policy, model, clock, body))
    assert model.ran == [0.0, 4.0, 2.0, 3.0]  # level 2 fresh, level 2 delayed, level 3; level 1's rejected


def test_a_request_of_a_delay_level_past_its_deadline_is_a_504_though_another_level_rejects():
    model = Recorder(threading.Event())
    policy = BatchPolicy(
        max_batch_size=1,
        priority_levels=2,
        default_priority_level=1,
        priority_queue_policy={1: QueuePolicy(MINUTE_S), 2: QueuePolicy(0.01, delays=True)},
    )

    async def body(batcher):
        running = await busy_instance(batcher, model)
        try:
            with pytest.raises(DeadlineExceeded):
                await batcher.submit(rows(1, 1), timeout_s=0.05, priority=2)
        finally:
            model.gate.set()
            await running

    run(with_batcher(policy, model, body))


EMBED_CONFIG_LEVELS = "dynamic_batching { priority_levels: 2 default_priority_level: 2 }"


class RecordingGate(Gate):
    """:class:`Gate` sessions that also record the tokens of every run."""

    def __init__(self) -> None:
        super().__init__()
        self.fed: list[list[int]] = []

    def factory(self, path, sess_options=None, providers=None):
        gated = super().factory(path, sess_options, providers)
        fed = self.fed

        class Recording:
            def __getattr__(self, name):
                return getattr(gated, name)

            def run(self, names, feeds):
                fed.append(feeds["tokens"][:, 0].tolist())
                return gated.run(names, feeds)

        return Recording()


def test_the_embedded_backend_queues_a_request_at_the_level_its_priority_names(tmp_path: Path, caplog):
    """End to end through the backend: the config's levels are honoured without a load warning, and a
    request's ``InferRequest.priority`` (the HTTP codec's, from its ``parameters.priority``) leads the
    next merged batch."""
    root = embedding_repository(tmp_path)
    config = root / "embed" / "config.pbtxt"
    config.write_text(config.read_text().replace("dynamic_batching { }", EMBED_CONFIG_LEVELS))
    gate = RecordingGate()
    backend = OnnxRuntimeBackend(
        Repository(root), OrtOptions(lone_request_threads=0), session_factory=gate.factory
    )

    def request(token: int, priority: int | None) -> InferRequest:
        parameters = {} if priority is None else {"parameters": {"priority": priority}}
        body = {"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [1, 1], "data": [token]}]}
        return parse_infer(json.dumps({**body, **parameters}).encode(), None, "embed", "").request

    async def body():
        await backend.start()
        try:
            running = asyncio.create_task(backend.infer(request(1, None)))
            await until(gate.entered.is_set)
            batcher = backend._loaded("embed", "").batcher  # noqa: SLF001
            queued = []
            for token, priority in ((2, None), (3, 0), (4, 1)):
                queued.append(asyncio.create_task(backend.infer(request(token, priority))))
                await until(lambda n=len(queued): batcher.queue_depth == n)
            gate.release.set()
            answers = await asyncio.wait_for(asyncio.gather(running, *queued), DEADLINE_S)
            return [a.outputs["hidden"][0, 0, 0] for a in answers]
        finally:
            gate.release.set()
            await backend.stop()

    with caplog.at_level(logging.WARNING, logger="serving.execution.loaded_model"):
        firsts = asyncio.run(body())
    assert firsts == [4.0, 8.0, 12.0, 16.0]  # each its own row of the table (token * 4)
    assert gate.fed[-2:] == [[1], [4, 2, 3]]  # priority 1 leads; the default level's follow in order
    assert not [r for r in caplog.records if "priority" in r.getMessage()]


def test_a_grpc_requests_priority_parameter_reaches_the_backend():
    from serving.protocol.grpc_servicer import InferenceServicer
    from tests.h2_client import doubling_request
    from tests.test_grpc import FakeBackend

    class NoDeadline:
        def time_remaining(self) -> None:
            return None

    backend = FakeBackend()
    request = doubling_request(np.ones((1, 3), np.float32))
    request.parameters["priority"].CopyFrom(service_pb2.InferParameter(uint64_param=2))
    asyncio.run(InferenceServicer(backend)._infer(request, NoDeadline()))  # noqa: SLF001
    assert backend.last_request.priority == 2 and "priority" not in backend.last_request.parameters


# -- a failed merged batch, run again request by request ------------------------------------------------


class Breaking:
    """A model whose merged batches (more than one row) fail once ``entered`` is released; runs of one
    row double their input. Records each run's values."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.ran: list[list[float]] = []

    def __call__(self, instance: int, inputs):
        x = inputs["x"]
        self.ran.append(x[:, 0].tolist())
        if len(x) > 1:
            self.entered.set()
            assert self.release.wait(DEADLINE_S)
            raise RuntimeError("the session broke")
        return {"y": x * 2}


@pytest.mark.parametrize("leaves", ["cancelled", "deadline"])
def test_a_request_whose_caller_left_during_a_failed_batch_is_not_run_again(leaves):
    model, observer = Breaking(), Observer()
    policy = BatchPolicy(max_batch_size=4, preferred_batch_sizes=(3,), max_queue_delay_s=MINUTE_S)

    async def body(batcher):
        gone = asyncio.create_task(
            batcher.submit(rows(1, 1), timeout_s=DEADLINE_S if leaves == "cancelled" else 0.3)
        )
        stay = [asyncio.create_task(batcher.submit(rows(v, 1))) for v in (2, 3)]
        assert await asyncio.to_thread(model.entered.wait, DEADLINE_S)  # the batch of three runs
        if leaves == "cancelled":
            gone.cancel()
        await until(gone.done)
        model.release.set()
        answers = await asyncio.wait_for(asyncio.gather(*stay), DEADLINE_S)
        with pytest.raises(asyncio.CancelledError if leaves == "cancelled" else DeadlineExceeded):
            await gone
        await until(lambda: batcher._running == 0)  # noqa: SLF001 - the batches' own count
        return [a["y"].tolist() for a in answers]

    assert run(with_batcher(policy, model, body, observer=observer)) == [[[4.0]], [[6.0]]]
    assert model.ran == [[1.0, 2.0, 3.0], [2.0], [3.0]]  # the request that left ran once, in the batch
    assert observer.batches == [1, 1] and len(observer.queued) == 2  # the two runs alone, nothing else
