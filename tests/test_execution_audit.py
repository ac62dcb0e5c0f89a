"""Audit of the execution and decoding layers: Triton's batch-forming rule with preferred sizes, requests
that succeed alone after a failed merged batch are observed, and a Triton that is gone mid-translation
is a 503 with Retry-After (``--triton-translate scheduler``), never a 500."""

from __future__ import annotations

import asyncio
import math
import socket
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest

from serving.decoding.scheduler import DecodingScheduler
from serving.decoding.scheduler_config import SchedulerConfig
from serving.errors import ServingError, Unavailable
from serving.execution.batch_policy import BatchPolicy
from serving.execution.batcher import DynamicBatcher
from serving.execution.batches import Pending, plan
from serving.execution.triton import TritonBackend
from tests.test_batcher import OneBadRow, Recorder, busy_instance, one_bad_of_three, rows, with_batcher
from tests.test_scheduler import SPEC, FakeDecoder, config, fake_encoder, solo
from tests.waiting import until


def queued(*items: int) -> list[Pending]:
    """Queued requests of these item counts, all of one shape."""
    return [Pending({}, n, ("x",), None, 0.0) for n in items]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("preferred", "max_batch", "items", "overdue", "expected"),
    [
        # the batch stops where it would pass the largest preferred size, even with more that fit
        ((4,), 8, [1] * 8, False, (4, True)),
        # items of 2 with a preferred 3: the first request alone (Triton marks it there)
        ((3,), 8, [2, 2, 2], False, (1, True)),
        # a request that cannot join still leaves the preferred prefix, not all that fit
        ((2,), 4, [1, 1, 1, 2], False, (2, True)),
        # past the queue delay: everything that fits, not the preferred prefix
        ((2,), 8, [1] * 5, True, (5, True)),
        ((1, 2, 4, 8), 8, [1] * 7, True, (7, True)),
        # unchanged: without preferred sizes all that fit; short of max_batch_size it may wait
        ((), 8, [1] * 3, False, (3, False)),
        ((), 4, [1] * 6, False, (4, True)),
        ((1, 2, 4, 8), 8, [1] * 3, False, (2, True)),
    ],
)
def test_the_next_batch_is_the_one_tritons_dynamic_batcher_forms(
    preferred, max_batch, items, overdue, expected
):
    """Triton's ``GetDynamicBatch``: while the oldest request is within the queue delay, a preferred
    size or the run up to the largest preferred size; past it, all that fit."""
    policy = BatchPolicy(max_batch_size=max_batch, preferred_batch_sizes=preferred, max_queue_delay_s=0.01)
    waiting = queued(*items)
    assert plan(policy, waiting[0], waiting, overdue) == expected


def _sizes_after_a_busy_run(policy: BatchPolicy, waiting: int, *, late_s: float = 0.0) -> list[int]:
    """The batch sizes a batcher runs when ``waiting`` one-item requests queued behind a busy
    instance, its clock moved on by ``late_s`` before the instance is free again."""
    gate, now = threading.Event(), [0.0]
    model = Recorder(gate)

    async def body(batcher: DynamicBatcher) -> None:
        first = await busy_instance(batcher, model)
        tasks = [asyncio.create_task(batcher.submit(rows(i, 1))) for i in range(1, waiting + 1)]
        await until(lambda: batcher.queue_depth == waiting)
        now[0] += late_s
        gate.set()
        await asyncio.gather(first, *tasks)

    asyncio.run(with_batcher(policy, model, body, clock=lambda: now[0]))
    return model.sizes


def test_a_batch_never_passes_the_largest_preferred_size_within_the_queue_delay() -> None:
    policy = BatchPolicy(max_batch_size=8, preferred_batch_sizes=(4,))
    assert _sizes_after_a_busy_run(policy, 8) == [1, 4, 4]


def test_requests_that_waited_past_the_queue_delay_leave_in_one_batch_not_in_preferred_sizes() -> None:
    """A GPU export's preferred sizes (1, 2, 4, 8) and queue delay: requests queued behind a busy
    instance past the delay run together (one padded bucket), as Triton sends them."""
    policy = BatchPolicy(max_batch_size=8, preferred_batch_sizes=(1, 2, 4, 8), max_queue_delay_s=0.0005)
    assert _sizes_after_a_busy_run(policy, 7, late_s=1.0) == [1, 7]


class Observer:
    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []  # (items, requests)
        self.queued: list[float] = []

    def watch_queue_depth(self, name, read) -> None:
        pass

    def observe_batch(self, name, items, requests, queued_s, input_s, infer_s, output_s, version="") -> None:
        self.batches.append((items, requests))

    def observe_queue(self, name, seconds) -> None:
        self.queued.append(seconds)


def test_requests_that_succeed_alone_after_their_merged_batch_failed_are_observed_as_run() -> None:
    """``kiln_executed_requests_total``, the queue histogram and the statistics' queue count every
    request that ran and succeeded, those rerun alone after a failed merged batch included; the
    request that failed is not counted as run."""
    gate, observer = threading.Event(), Observer()
    model = OneBadRow(gate)

    async def body(batcher: DynamicBatcher) -> list:
        return await one_bad_of_three(batcher, model, gate)

    answers = asyncio.run(with_batcher(BatchPolicy(max_batch_size=8), model, body, observer=observer))
    assert [a["y"].ravel().tolist() for a in answers] == [[0.0], [2.0, 4.0], [6.0]]
    assert model.sizes == [1, 4, 2, 1, 1]  # the merged batch failed; each then ran alone
    assert sorted(observer.batches) == [(1, 1), (1, 1), (2, 1)]
    assert len(observer.queued) == 3 and all(math.isfinite(q) and q >= 0 for q in observer.queued)


@pytest.fixture
def gone() -> Iterator[str]:
    """The address of a Triton that is gone: a port bound and never listening, held for the test so no
    other socket (nor a client's own reconnect, connecting to itself) can answer on it."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{held.getsockname()[1]}"


def _triton_runner(url: str, protocol: str, names: list[str]):
    """A ``--backend triton`` runner (what the scheduler decodes through in ``scheduler`` mode) for an
    entry taking ``names``, against the Triton at ``url``."""
    entry = SimpleNamespace(
        inputs=lambda: [SimpleNamespace(name=n) for n in names],
        outputs=lambda: [SimpleNamespace(name="log_probs")],
    )
    repository = SimpleNamespace(get=lambda name: entry)
    backend = TritonBackend(url, protocol, timeout_s=5.0, retry_after_s=2.0, repository=repository)
    return backend.runner("fake_decoder")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_triton_runner_whose_triton_is_gone_raises_unavailable_with_retry_after(
    protocol: str, gone: str
) -> None:
    run = _triton_runner(gone, protocol, ["x"])
    with pytest.raises(Unavailable, match="is unavailable") as raised:
        run({"x": np.zeros((1, 2), np.float32)})
    assert raised.value.status == 503 and raised.value.retry_after == 2.0


class DyingDecoder(FakeDecoder):
    """The fake decoder for ``healthy`` calls, then a Triton decoder entry whose server died."""

    def __init__(self, healthy: int, gone) -> None:
        super().__init__()
        self.healthy, self.gone = healthy, gone

    def __call__(self, inputs):
        if self.healthy == 0:
            return self.gone(inputs)
        self.healthy -= 1
        return super().__call__(inputs)


def test_a_translation_whose_triton_dies_mid_request_is_a_503_and_the_next_is_served(gone: str) -> None:
    decoder_inputs = [i["name"] for i in SPEC["decoder"]["inputs"]]
    decoder = DyingDecoder(3, _triton_runner(gone, "grpc", decoder_inputs))
    long = config(2, max_length=30, min_length=29)  # still decoding when Triton goes

    async def body() -> tuple[ServingError, list]:
        scheduler = DecodingScheduler("fake", SPEC, fake_encoder, decoder, SchedulerConfig(timeout_s=60))
        await scheduler.start()
        try:
            with pytest.raises(ServingError) as raised:
                await scheduler.submit([[5, 6]], long)
            decoder.healthy = 10**6  # Triton is back
            return raised.value, await scheduler.submit([[5, 6]], config(2))
        finally:
            await scheduler.stop(grace_s=1.0)

    error, served = asyncio.run(body())
    assert isinstance(error, Unavailable) and error.status == 503 and error.retry_after == 2.0
    assert served == [solo([5, 6], config(2))]


def test_an_encoder_call_that_finds_triton_gone_is_a_503(gone: str) -> None:
    encoder = _triton_runner(gone, "grpc", ["src_ids"])

    async def body() -> ServingError:
        scheduler = DecodingScheduler("fake", SPEC, encoder, FakeDecoder(), SchedulerConfig(timeout_s=60))
        await scheduler.start()
        try:
            with pytest.raises(ServingError) as raised:
                await scheduler.submit([[5, 6]], config(2))
            return raised.value
        finally:
            await scheduler.stop(grace_s=1.0)

    error = asyncio.run(body())
    assert isinstance(error, Unavailable) and error.status == 503 and error.retry_after == 2.0


class EndsOnFour(FakeDecoder):
    """Sentences whose source holds token 4 end at once (EOS first); the others never choose EOS. Its
    second call waits for ``release``: a sentence has finished, its request has not."""

    def __init__(self) -> None:
        super().__init__()
        self.second, self.release = threading.Event(), threading.Event()

    def __call__(self, inputs):
        if self.calls:
            self.second.set()
            self.release.wait(30)
        outputs = super().__call__(inputs)
        memory = inputs["memory"][:, :, 0]
        ends = ((memory == 4 * np.arange(1, memory.shape[1] + 1)) & inputs["src_mask"]).any(1)  # [rows]
        log_probs = outputs["log_probs"]  # [rows, V]
        log_probs[ends] = -30.0
        log_probs[ends, SPEC["eos_id"]] = 0.0
        log_probs[~ends, SPEC["eos_id"]] = -30.0
        return outputs


def test_a_timed_out_translation_adds_no_tokens_though_one_of_its_texts_had_finished() -> None:
    """``kiln_tokens_generated_total`` counts the tokens of the hypotheses returned: a request that
    times out returns none, even where one of its texts had finished."""
    from serving.errors import DeadlineExceeded
    from serving.metrics import GatewayMetrics

    metrics, decoder = GatewayMetrics(), EndsOnFour()

    async def body() -> None:
        scheduler = DecodingScheduler(
            "fake", SPEC, fake_encoder, decoder, SchedulerConfig(), observer=metrics
        )
        await scheduler.start()
        try:
            with pytest.raises(DeadlineExceeded):
                await scheduler.submit([[5, 4], [5, 6]], config(1, max_length=30), timeout_s=1.0)
            assert decoder.second.is_set()  # the first text had finished before the deadline
        finally:
            decoder.release.set()
            await scheduler.stop(grace_s=1.0)

    asyncio.run(body())
    assert metrics.sample("kiln_translate_latency_seconds_count", model="fake", outcome="timeout") == 1
    assert not metrics.sample("kiln_tokens_generated_total", model="fake")
