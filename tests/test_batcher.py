"""The dynamic batcher follows Triton's rules and hands every request exactly its own rows."""

from __future__ import annotations

import asyncio
import logging
import threading

import numpy as np
import pytest

from serving.errors import BadRequest, DeadlineExceeded, Overloaded, Unavailable
from serving.execution.batcher import BatchPolicy, DynamicBatcher
from tests.waiting import DEADLINE_S, until


class Recorder:
    """A model that doubles its input and records each batch it ran: its size, its thread and which
    requests (each row's first value) it held."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.sizes: list[int] = []
        self.threads: list[int] = []
        self.ran: list[float] = []
        self.gate = gate
        self.entered = threading.Event()  # set when a batch reaches the model

    def __call__(self, instance: int, inputs):
        self.threads.append(threading.get_ident())
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(timeout=10)
        self.sizes.append(len(inputs["x"]))
        self.ran.extend(float(v) for v in inputs["x"][:, 0])
        return {"y": inputs["x"] * 2}


def run(coro):
    return asyncio.run(coro)


async def with_batcher(policy, model, body, **options):
    batcher = DynamicBatcher("m", model, policy, **options)
    batcher.start()
    try:
        return await body(batcher)
    finally:
        await batcher.stop(grace_s=5)


def rows(start: int, count: int) -> dict:
    return {"x": np.arange(start, start + count, dtype=np.float32).reshape(count, 1)}


def test_concurrent_requests_merge_up_to_max_batch_size_and_get_their_own_rows():
    model = Recorder()
    policy = BatchPolicy(max_batch_size=4, max_queue_delay_s=0.05)

    async def body(batcher):
        sizes = [1, 2, 1, 3, 1]
        starts = np.cumsum([0, *sizes[:-1]])
        results = await asyncio.gather(
            *(batcher.submit(rows(int(s), n)) for s, n in zip(starts, sizes, strict=True))
        )
        for (s, n), result in zip(zip(starts, sizes, strict=True), results, strict=True):
            np.testing.assert_array_equal(result["y"], rows(int(s), n)["x"] * 2)

    run(with_batcher(policy, model, body))
    assert max(model.sizes) <= 4 and sum(model.sizes) == 8 and len(model.sizes) < 5


def test_a_preferred_batch_size_is_sent_without_waiting_for_the_delay():
    model = Recorder()
    policy = BatchPolicy(max_batch_size=8, preferred_batch_sizes=(2,), max_queue_delay_s=30.0)

    async def body(batcher):
        await asyncio.wait_for(
            asyncio.gather(batcher.submit(rows(0, 1)), batcher.submit(rows(1, 1))), timeout=5
        )

    run(with_batcher(policy, model, body))
    assert model.sizes == [2]


def test_a_lone_request_waits_at_most_the_queue_delay():
    model = Recorder()
    policy = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.05)
    result = run(with_batcher(policy, model, lambda b: asyncio.wait_for(b.submit(rows(0, 3)), timeout=5)))
    np.testing.assert_array_equal(result["y"], rows(0, 3)["x"] * 2)
    assert model.sizes == [3]


def test_without_dynamic_batching_requests_run_one_by_one():
    model = Recorder()
    policy = BatchPolicy(max_batch_size=8, merge=False)
    run(with_batcher(policy, model, lambda b: asyncio.gather(*(b.submit(rows(i, 1)) for i in range(3)))))
    assert model.sizes == [1, 1, 1]


def test_requests_with_different_shapes_are_never_merged():
    model = Recorder()
    policy = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.05)

    async def body(batcher):
        wide = {"x": np.ones((1, 2), dtype=np.float32)}
        a, b = await asyncio.gather(batcher.submit(rows(0, 1)), batcher.submit(wide))
        assert a["y"].shape == (1, 1) and b["y"].shape == (1, 2)

    run(with_batcher(policy, model, body))
    assert model.sizes == [1, 1]


def test_a_full_queue_is_refused_and_a_timed_out_request_is_dropped():
    gate = threading.Event()
    model = Recorder(gate)
    policy = BatchPolicy(max_batch_size=1, max_queue_size=1)

    async def body(batcher):
        running = await busy_instance(batcher, model)  # the worker blocks on the gate
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(rows(1, 1), timeout_s=0.05)
        assert batcher.queue_depth == 0  # the expired request left the queue
        queued = asyncio.create_task(batcher.submit(rows(2, 1)))
        await until(lambda: batcher.queue_depth == 1)
        with pytest.raises(Overloaded) as info:
            await batcher.submit(rows(3, 1))
        assert info.value.retry_after == 1.0
        gate.set()
        return await running, await queued

    first, third = run(with_batcher(policy, model, body))
    np.testing.assert_array_equal(third["y"], [[4.0]])
    assert model.sizes == [1, 1]


def test_the_policy_is_read_from_the_config_dynamic_batching_block():
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(
        "max_batch_size: 16 dynamic_batching { preferred_batch_size: [8, 4] max_queue_delay_microseconds: 500 "
        "default_queue_policy { max_queue_size: 10 } } instance_group [{ count: 2 }]",
        model_config_pb2.ModelConfig(),
    )
    policy = BatchPolicy.from_config(config, max_queue_size=100, instances=2)
    assert policy == BatchPolicy(16, (4, 8), 0.0005, True, 10, 2)
    plain = BatchPolicy.from_config(
        model_config_pb2.ModelConfig(max_batch_size=4), max_queue_size=7, instances=1
    )
    assert not plain.merge and plain.max_queue_size == 7


def test_a_queued_request_whose_caller_goes_away_is_never_run():
    gate, started = threading.Event(), threading.Event()

    async def body(batcher):
        first = asyncio.create_task(batcher.submit(rows(0, 1)))
        await asyncio.to_thread(started.wait, 10)  # the only instance is busy with the first request
        second = asyncio.create_task(batcher.submit(rows(1, 3)))
        while batcher.queue_depth == 0:
            await asyncio.sleep(0)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert batcher.queue_depth == 0  # its caller went away: it left the queue at once
        gate.set()
        assert (await first)["y"].shape == (1, 1)
        third = await batcher.submit(rows(4, 2))  # the next batch holds only the live request
        return third["y"].shape

    recorder = Recorder(gate)
    started_model = lambda i, x: (started.set(), recorder(i, x))[1]  # noqa: E731
    assert run(with_batcher(BatchPolicy(max_batch_size=8), started_model, body)) == (2, 1)
    assert recorder.sizes == [1, 2]


def test_a_request_that_finds_the_instance_idle_runs_at_once_on_the_instance_thread():
    seen: list[str] = []

    def model(instance, inputs):
        seen.append(threading.current_thread().name)
        return {"y": inputs["x"] * 2}

    async def body(batcher):
        assert batcher.queue_depth == 0
        return await asyncio.wait_for(batcher.submit(rows(0, 2)), timeout=DEADLINE_S)

    result = run(with_batcher(BatchPolicy(max_batch_size=8), model, body))
    np.testing.assert_array_equal(result["y"], rows(0, 2)["x"] * 2)
    assert seen == ["kiln-batch-m-0"]  # not the event loop's thread, not a shared pool


def test_requests_arriving_while_the_instance_is_busy_form_the_next_batch_together():
    gate = threading.Event()
    model = Recorder(gate)

    async def body(batcher):
        first = await busy_instance(batcher, model)
        waiting = [asyncio.create_task(batcher.submit(rows(i, 1))) for i in range(1, 4)]
        await until(lambda: batcher.queue_depth == 3)
        gate.set()
        results = await asyncio.gather(first, *waiting)
        return [r["y"].ravel().tolist() for r in results]

    answers = run(with_batcher(BatchPolicy(max_batch_size=8), model, body))
    assert answers == [[0.0], [2.0], [4.0], [6.0]]
    assert model.sizes == [1, 3]


@pytest.mark.parametrize("fails", [False, True])
def test_an_instance_idle_after_a_merged_batch_releases_on_its_own_thread_and_serves_on(fails):
    """After running more than one item at once and then nothing for ``release_idle_s``, the instance's
    own thread calls ``release(instance)`` (a model's arena shrink); a failing release is not
    counted and leaves the instance serving."""
    model = Recorder()
    released: list[tuple[int, int]] = []

    def release(instance: int) -> None:
        released.append((instance, threading.get_ident()))
        if fails:
            raise RuntimeError("no arena to shrink")

    async def body(batcher):
        two = await batcher.submit(rows(1, 2))  # two items in one batch: the arena may have grown
        await until(lambda: len(released) == 1)
        one = await batcher.submit(rows(3, 1))
        return batcher.releases, [r["y"].ravel().tolist() for r in (two, one)]

    policy, observer = BatchPolicy(max_batch_size=8), Observer()
    options = {"release": release, "release_idle_s": 0.05, "observer": observer}
    releases, answers = run(with_batcher(policy, model, body, **options))
    assert answers == [[2.0, 4.0], [6.0]]
    assert released[0] == (0, model.threads[0])  # the instance's own thread, between its batches
    assert releases == (0 if fails else 1)
    assert observer.released == ([] if fails else [("m", "batch")])  # kiln_memory_releases_total


def test_two_instances_run_two_batches_at_the_same_time():
    both_running = threading.Barrier(2, timeout=DEADLINE_S)

    def model(instance, inputs):
        both_running.wait()  # only returns once the other instance is inside a batch too
        return {"y": inputs["x"] + instance * 0}

    async def body(batcher):
        return await asyncio.gather(batcher.submit(rows(0, 1)), batcher.submit(rows(5, 1)))

    policy = BatchPolicy(max_batch_size=1, instances=2)
    first, second = run(with_batcher(policy, model, body))
    assert first["y"].tolist() == [[0.0]] and second["y"].tolist() == [[5.0]]


def test_a_request_that_times_out_during_its_batch_fails_alone_and_the_others_get_their_rows():
    gate = threading.Event()
    model = Recorder(gate)

    async def body(batcher):
        patient = await busy_instance(batcher, model)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(rows(1, 1), timeout_s=0.01)
        gate.set()
        return await patient

    assert run(with_batcher(BatchPolicy(max_batch_size=8), model, body))["y"].tolist() == [[0.0]]


def test_a_failing_batch_fails_its_own_requests_and_the_next_batch_still_runs():
    calls = []

    def model(instance, inputs):
        calls.append(len(inputs["x"]))
        if len(calls) == 1:
            raise RuntimeError("the session broke")
        return {"y": inputs["x"]}

    async def body(batcher):
        with pytest.raises(RuntimeError, match="the session broke"):
            await batcher.submit(rows(0, 1))
        return await batcher.submit(rows(7, 1))

    assert run(with_batcher(BatchPolicy(max_batch_size=8), model, body))["y"].tolist() == [[7.0]]


async def busy_instance(batcher: DynamicBatcher, model) -> asyncio.Task:
    """Submit one request and return once ``model`` (a gated Recorder) is running it: the instance is busy."""
    task = asyncio.create_task(batcher.submit(rows(0, 1)))
    assert await asyncio.to_thread(model.entered.wait, DEADLINE_S)
    return task


async def one_running_one_queued(model) -> tuple[DynamicBatcher, asyncio.Task, asyncio.Task]:
    """A started batch-1 batcher whose instance runs one request (held by ``model``) while one waits."""
    batcher = DynamicBatcher("m", model, BatchPolicy(max_batch_size=1))
    batcher.start()
    running = await busy_instance(batcher, model)
    queued = asyncio.create_task(batcher.submit(rows(1, 1)))
    await until(lambda: batcher.queue_depth == 1)
    return batcher, running, queued


def test_stopping_finishes_queued_requests_then_refuses_new_ones():
    gate = threading.Event()
    model = Recorder(gate)

    async def body():
        batcher, running, queued = await one_running_one_queued(model)
        stopping = asyncio.create_task(batcher.stop(grace_s=DEADLINE_S))
        await asyncio.sleep(0)  # the stop task runs up to its first wait: the batcher is closing
        with pytest.raises(Unavailable):
            await batcher.submit(rows(2, 1))
        gate.set()
        await stopping
        return (await running)["y"].tolist(), (await queued)["y"].tolist()

    assert run(body()) == ([[0.0]], [[2.0]])
    assert model.sizes == [1, 1]


def test_requests_still_queued_when_the_grace_period_ends_are_answered_unavailable():
    gate = threading.Event()
    model = Recorder(gate)

    async def body():
        batcher, stuck, queued = await one_running_one_queued(model)
        await batcher.stop(grace_s=0.0)  # the running batch outlives the grace period
        with pytest.raises(Unavailable):
            await queued
        gate.set()
        return (await stuck)["y"].tolist()  # the batch that was running still answers

    assert run(body()) == [[0.0]]
    assert model.sizes == [1]  # the queued request never ran


class Inline:
    """An owner's ``inline(backlogged)`` leave: records what it was asked and answers ``allow``."""

    def __init__(self, allow: bool = True) -> None:
        self.allow, self.asked = allow, []

    def __call__(self, backlogged: bool) -> bool:
        self.asked.append(backlogged)
        return self.allow


class Observer:
    def __init__(self) -> None:
        self.batches, self.queued, self.released = [], [], []

    def watch_queue_depth(self, name, read) -> None:
        pass

    def observe_batch(self, name, size, requests, queued_s, input_s, infer_s, output_s, version="") -> None:
        self.batches.append(size)

    def observe_queue(self, name, seconds) -> None:
        self.queued.append(seconds)

    def observe_release(self, name, kind) -> None:
        self.released.append((name, kind))


def test_a_lone_request_the_owner_lets_through_runs_on_the_event_loop_and_is_observed():
    model, inline, observer = Recorder(), Inline(), Observer()

    async def body():
        batcher = DynamicBatcher("m", model, BatchPolicy(max_batch_size=4), inline=inline, observer=observer)
        batcher.start()
        try:
            result = await batcher.submit(rows(3, 1))
        finally:
            await batcher.stop(grace_s=5)
        return result, threading.get_ident()

    result, loop_thread = run(body())
    np.testing.assert_array_equal(result["y"], rows(3, 1)["x"] * 2)
    assert model.threads == [loop_thread] and inline.asked == [False]
    assert observer.batches == [1] and observer.queued == [0.0]


def test_a_request_refused_by_the_owner_or_of_several_items_goes_through_the_queue():
    model = Recorder()

    async def body(inline, items):
        batcher = DynamicBatcher("m", model, BatchPolicy(max_batch_size=4), inline=inline)
        batcher.start()
        try:
            await batcher.submit(rows(0, items))
        finally:
            await batcher.stop(grace_s=5)
        return threading.get_ident()

    loops = [run(body(Inline(allow=False), 1)), run(body(Inline(), 2)), run(body(None, 1))]
    assert all(ran != loop for ran, loop in zip(model.threads, loops, strict=True))


def test_a_request_sent_right_after_a_run_on_the_loop_is_told_backlogged(monkeypatch):
    import serving.execution.batcher as batcher_module

    monkeypatch.setattr(batcher_module, "INLINE_GAP_S", 60.0)  # "right after": within a minute
    inline = Inline()

    async def body(batcher):
        await batcher.submit(rows(0, 1))
        await batcher.submit(rows(1, 1))

    async def scenario():
        batcher = DynamicBatcher("m", Recorder(), BatchPolicy(max_batch_size=4), inline=inline)
        batcher.start()
        try:
            await body(batcher)
        finally:
            await batcher.stop(grace_s=5)

    run(scenario())
    assert inline.asked == [False, True]


def test_nothing_runs_on_the_loop_while_a_batch_runs_on_an_instance_thread():
    gate = threading.Event()
    model, inline = Recorder(gate), Inline()

    async def scenario():
        batcher = DynamicBatcher("m", model, BatchPolicy(max_batch_size=4), inline=Inline(allow=False))
        batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(rows(0, 2)))
            assert await asyncio.to_thread(model.entered.wait, DEADLINE_S)
            batcher.inline = inline  # the owner would allow it now, but an instance is busy
            second = asyncio.create_task(batcher.submit(rows(2, 1)))
            await until(lambda: batcher.queue_depth == 1)
            gate.set()
            await asyncio.gather(first, second)
            return threading.get_ident()
        finally:
            await batcher.stop(grace_s=5)

    loop_thread = run(scenario())
    assert inline.asked == [] and loop_thread not in model.threads and model.sizes == [2, 1]


def test_a_failing_run_on_the_loop_fails_its_request_alone_and_the_next_still_runs():
    calls = []

    def model(instance, inputs):
        calls.append(float(inputs["x"][0, 0]))
        if inputs["x"][0, 0] == 13:
            raise RuntimeError("the runtime failed")
        return {"y": inputs["x"] * 2}

    async def scenario():
        batcher = DynamicBatcher("m", model, BatchPolicy(max_batch_size=4), inline=Inline())
        batcher.start()
        try:
            with pytest.raises(RuntimeError, match="the runtime failed"):
                await batcher.submit(rows(13, 1))
            return await batcher.submit(rows(2, 1))
        finally:
            await batcher.stop(grace_s=5)

    np.testing.assert_array_equal(run(scenario())["y"], rows(2, 1)["x"] * 2)
    assert calls == [13.0, 2.0]


def test_a_lone_request_a_model_refuses_as_the_clients_is_logged_in_a_line_not_a_traceback(caplog):
    """Refused in a batch, a client's input is one INFO line; run alone on the loop it was an ERROR with
    its traceback, which any client could write at will."""

    def model(instance, inputs):
        raise BadRequest("input 'x': token 9 is past the vocabulary")

    async def scenario():
        batcher = DynamicBatcher("m", model, BatchPolicy(max_batch_size=4), inline=Inline())
        batcher.start()
        try:
            with pytest.raises(BadRequest):
                await batcher.submit(rows(1, 1))
        finally:
            await batcher.stop(grace_s=5)

    with caplog.at_level(logging.INFO, logger="serving.execution.batcher"):
        run(scenario())
    (record,) = [r for r in caplog.records if "lone request" in r.getMessage()]
    assert record.levelno == logging.INFO and record.exc_info is None
    assert "token 9 is past the vocabulary" in record.getMessage()


class OneBadRow(Recorder):
    """A gated Recorder whose model refuses any batch holding a negative value (as ONNX Runtime refuses
    an out-of-range token id), whatever else the batch holds."""

    def __call__(self, instance: int, inputs):
        outputs = super().__call__(instance, inputs)
        if (inputs["x"] < 0).any():
            raise ValueError("indices element out of data bounds")
        return outputs


async def one_bad_of_three(batcher, model: OneBadRow, gate: threading.Event) -> list:
    """A busy instance, then a good, a bad and another good request queued behind it, merged into one
    batch that fails: the bad one's error checked, the others' answers (the busy one's first)."""
    running = await busy_instance(batcher, model)
    good, bad, other = (asyncio.create_task(batcher.submit(x)) for x in (rows(1, 2), rows(-5, 1), rows(3, 1)))
    await until(lambda: batcher.queue_depth == 3)
    gate.set()
    with pytest.raises(ValueError, match="out of data bounds"):
        await bad
    return [await running, await good, await other]


def test_a_request_that_fails_a_merged_batch_fails_alone_and_the_others_get_their_rows():
    gate = threading.Event()
    model = OneBadRow(gate)

    async def body(batcher):
        return await one_bad_of_three(batcher, model, gate)

    answers = run(with_batcher(BatchPolicy(max_batch_size=8), model, body))
    assert model.sizes[:2] == [1, 4]  # the three queued requests did run as one merged batch first
    assert [a["y"].ravel().tolist() for a in answers] == [[0.0], [2.0, 4.0], [6.0]]


def test_requests_whose_merged_outputs_cannot_be_split_are_answered_not_left_waiting():
    gate = threading.Event()
    model = Recorder(gate)

    def no_batch_axis(instance: int, inputs):  # a broken graph: a 0-d output for a batched model
        return {"y": np.asarray(model(instance, inputs)["y"].sum())}

    async def body(batcher):
        running = await busy_instance(batcher, model)
        queued = [asyncio.create_task(batcher.submit(rows(i, 1))) for i in (1, 2)]
        await until(lambda: batcher.queue_depth == 2)
        gate.set()
        return await asyncio.wait_for(asyncio.gather(running, *queued), DEADLINE_S)

    answers = run(with_batcher(BatchPolicy(max_batch_size=8), no_batch_axis, body))
    assert [float(a["y"]) for a in answers] == [0.0, 2.0, 4.0]


@pytest.mark.parametrize("dtype", ["uint8", "float32", "float16", "int64", "bool", ">f4"])
def test_a_merged_input_holds_every_requests_rows_in_order_whatever_its_dtype(dtype):
    from serving.execution.batches import stacked

    rng = np.random.default_rng(0)
    parts = [(rng.random((rows, 3, 2)) * 100).astype(dtype) for rows in (1, 2, 0, 4)]
    merged = stacked(parts)
    np.testing.assert_array_equal(merged, np.concatenate(parts, axis=0))
    assert merged.dtype == np.dtype(dtype) and merged.shape == (7, 3, 2)
    for part in parts:  # a copy: the requests' own buffers are not the batch's
        assert not np.shares_memory(merged, part)


def test_object_and_strided_inputs_merge_as_numpy_concatenates_them():
    from serving.execution.batches import stacked

    texts = [np.array([b"a", b"bc"], dtype=object), np.array([b"d"], dtype=object)]
    assert stacked(texts).tolist() == [b"a", b"bc", b"d"]
    wide = np.arange(24, dtype=np.float32).reshape(4, 6)
    strided = [wide[:, ::2], wide[:2, 1::2]]  # views that are not contiguous
    np.testing.assert_array_equal(stacked(strided), np.concatenate(strided, axis=0))
