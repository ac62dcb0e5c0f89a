"""The iteration-level scheduler over a scripted numpy translator: sharing steps never changes a result."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from serving.decoding import beam_search as bs
from serving.decoding import offline
from serving.decoding.scheduler import DecodingScheduler
from serving.decoding.scheduler_config import SchedulerConfig
from serving.errors import DeadlineExceeded, Overloaded, ServingError, UnprocessableInput
from tests.waiting import until

VOCAB = 9
SPEC = {
    "pad_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "vocab_size": VOCAB,
    "max_positions": 40,
    "encoder": {"inputs": ["src_ids"], "outputs": ["memory", "src_mask", "h0"]},
    "decoder": {
        "inputs": [
            {"name": "tokens", "role": "tokens"},
            {"name": "positions", "role": "positions"},
            {"name": "past", "role": "cache", "output": "new_past", "axis": 1, "init_shape": [-1, 0, 2]},
            {"name": "cache_mask", "role": "cache_mask"},
            {"name": "memory", "role": "encoder", "pad_axis": 1},
            {"name": "src_mask", "role": "encoder", "pad_axis": 1},
            {"name": "h", "role": "state", "output": "h_out", "init": "h0"},
        ],
        "outputs": ["log_probs", "new_past", "h_out"],
    },
    "dtypes": {
        "src_ids": "int64",
        "tokens": "int64",
        "positions": "int64",
        "src_mask": "bool",
        "cache_mask": "bool",
        "memory": "float32",
        "past": "float32",
        "h0": "float32",
    },
}


def fake_encoder(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-row integer features of the source (exact in float32, whatever the batch)."""
    src = inputs["src_ids"]  # [B, S]
    mask = src != 0  # [B, S]
    memory = (src * np.arange(1, src.shape[1] + 1))[:, :, None].astype(np.float32)  # [B, S, 1]
    return {"memory": memory, "src_mask": mask, "h0": (src.sum(1, keepdims=True) % 97).astype(np.float32)}


class FakeDecoder:
    """A scripted step: log-probs are a fixed function of each row's own history (cache, state, source).

    Everything is elementwise on integer-valued floats, so a row's result cannot depend on which other
    rows share the call or on left/right padding (which the masks must neutralise).
    """

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s, self.calls, self.fail_next = delay_s, [], False
        self.gate: threading.Event | None = None

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.gate is not None:
            self.gate.wait(5)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("scripted decoder failure")
        tokens, pos, past, valid = inputs["tokens"], inputs["positions"], inputs["past"], inputs["cache_mask"]
        self.calls.append(len(tokens))
        history = (past[:, :, 0] * (past[:, :, 1] + 1) * valid).sum(1)  # [rows]
        source = (inputs["memory"][:, :, 0] * inputs["src_mask"]).sum(1)  # [rows]
        key = (history * 7 + source * 3 + inputs["h"][:, 0] * 5 + pos * 11 + tokens) % 1009  # [rows]
        logits = 3.0 * np.sin(key[:, None] * (np.arange(VOCAB) + 1) * 0.37)  # [rows, V]
        logits[:, 0:2] = -30.0  # never pad / BOS
        logits = logits - logits.max(1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        new_past = np.stack([tokens, pos], axis=1)[:, None, :].astype(np.float32)  # [rows, 1, 2]
        h_out = ((inputs["h"] * 3 + tokens[:, None]) % 101).astype(np.float32)  # [rows, 1]
        return {"log_probs": log_probs.astype(np.float32), "new_past": new_past, "h_out": h_out}


class Recorder:
    """A DecodeObserver keeping every step's rows / requests and every translation's outcome."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []
        self.outcomes: list[str] = []
        self.models: set[str] = set()  # the model names the observer was told
        self.texts: list[int] = []  # each translation's texts
        self.queued: list[float | None] = []  # each translation's wait to join the batch
        self.seconds: list[float] = []
        self.releases: list[tuple[str, str]] = []  # each idle release: (model, kind)

    def observe_decode_step(
        self, model: str, rows: int, requests: int, seconds: float, steps: int = 1
    ) -> None:
        self.steps.extend([(rows, requests)] * steps)
        self.models.add(model)

    def observe_release(self, model: str, kind: str) -> None:
        self.releases.append((model, kind))

    def observe_translation(
        self,
        model: str,
        seconds: float,
        tokens: int,
        outcome: str,
        texts: int = 1,
        queued: float | None = None,
        version: str = "",
    ) -> None:
        self.outcomes.append(outcome)
        self.queued.append(queued)
        self.seconds.append(seconds)
        self.models.add(model)
        self.texts.append(texts)


SOURCES = [[5, 6, 7], [8], [4, 4, 5, 6, 7, 8, 3], [6, 5], [7, 7, 7, 7], [3, 8, 5, 4, 6]]


def config(beam: int, max_length: int = 12, **kw) -> bs.BeamConfig:
    return bs.BeamConfig(beam_size=beam, max_length=max_length, **kw)


def solo(source: list[int], cfg: bs.BeamConfig) -> list[bs.Hypothesis]:
    """The reference: the sentence decoded alone."""
    (hyps,) = offline.translate_ids(fake_encoder, FakeDecoder(), SPEC, [source], cfg)
    return hyps


async def _with_scheduler(body, decoder=None, encoder=fake_encoder, **cfg):
    recorder = Recorder()
    scheduler = DecodingScheduler(
        "fake", SPEC, encoder, decoder or FakeDecoder(), SchedulerConfig(**cfg), observer=recorder
    )
    await scheduler.start()
    try:
        return await body(scheduler, recorder)
    finally:
        await scheduler.stop(grace_s=1.0)


def test_a_second_decode_worker_reports_under_its_translators_name_with_each_requests_texts() -> None:
    """Workers are named ``<name>#i`` (threads, logs); metrics and statistics want the model's name."""
    recorder = Recorder()
    worker = DecodingScheduler(
        "fake#1", SPEC, fake_encoder, FakeDecoder(), SchedulerConfig(), observer=recorder, model="fake"
    )

    async def body():
        await worker.start()
        try:
            return await worker.submit(SOURCES[:3], config(2))
        finally:
            await worker.stop(grace_s=1.0)

    results = asyncio.run(body())
    assert len(results) == 3 and recorder.outcomes == ["success"] and recorder.texts == [3]
    assert recorder.models == {"fake"} and recorder.steps


class SteppedDecoder(FakeDecoder):
    """Runs one step per ``advance()``, so a test decides at which step each request arrives; records
    the rows of each call as it starts waiting for its turn (``entered``)."""

    def __init__(self) -> None:
        super().__init__()
        self.allowed, self.finished = threading.Semaphore(0), threading.Semaphore(0)
        self.free_running = False
        self.entered: list[int] = []

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.entered.append(len(inputs["tokens"]))
        if not self.free_running:
            self.allowed.acquire(timeout=30)
        try:
            return super().__call__(inputs)
        finally:
            self.finished.release()

    async def advance(self) -> None:
        """Let one step run and wait until it has."""
        self.allowed.release()
        assert await asyncio.to_thread(self.finished.acquire, True, 30), "no decoder step ran"

    def run_freely(self) -> None:
        self.free_running = True
        self.allowed.release()


class CountingEncoder:
    """The fake encoder, recording how many sentences each call encodes."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.sizes.append(len(inputs["src_ids"]))
        return fake_encoder(inputs)


LONG = config(1, min_length=9, max_length=10)  # ten steps, whatever the decoder says


async def _stepped_run(join: list[tuple[int, list[list[int]], bs.BeamConfig]], **cfg):
    """Submit ``(after_step, sources, config)`` requests, each once that many decoder steps ran (the
    batch must not run empty before the last arrives); check every result equals its solo decoding and
    return the decoder (rows of each call), the encoder (sentences of each call) and the recorder."""
    decoder, encoder, recorder = SteppedDecoder(), CountingEncoder(), Recorder()
    scheduler = DecodingScheduler("fake", SPEC, encoder, decoder, SchedulerConfig(**cfg), observer=recorder)
    await scheduler.start()
    try:
        tasks, steps = [], 0
        for after, sources, cfg_ in join:
            while steps < after:
                await decoder.advance()
                steps += 1
                await until(lambda n=steps + 1: len(decoder.entered) == n)  # the next call waits its turn
            calls = len(decoder.entered)  # the thread is idle (no call yet) or waits in call `calls`
            queued = scheduler.queued
            tasks.append(asyncio.create_task(scheduler.submit(sources, cfg_)))
            await until(lambda c=calls, q=queued: scheduler.queued > q or len(decoder.entered) > c)
        decoder.run_freely()
        results = await asyncio.gather(*tasks)
    finally:
        await scheduler.stop(grace_s=1.0)
    for (_, sources, cfg_), result in zip(join, results, strict=True):
        assert result == [solo(s, cfg_) for s in sources]  # sharing steps never changes a result
    return decoder, encoder, recorder


def test_requests_joining_at_different_steps_get_exactly_their_solo_results() -> None:
    configs = [
        config(4, min_length=4),
        config(1, min_length=4),
        config(3, n_best=2, min_length=4),
        config(2, length_penalty="gnmt", min_length=4),
        config(4),
        config(5),
    ]
    join = [(step, [source], cfg) for step, (source, cfg) in enumerate(zip(SOURCES, configs, strict=True))]
    # join_wait_steps=0: each request joins at the step after it arrives, however few join
    decoder, _, recorder = asyncio.run(_stepped_run(join, join_wait_steps=0))
    # request 0 alone (1 row, then 4), then each arrival's first row a step later: 4 + 1, 4 + 1 + 1
    assert decoder.entered[:4] == [1, 4, 5, 6]
    assert max(requests for _, requests in recorder.steps) >= 3, recorder.steps
    assert recorder.outcomes == ["success"] * len(SOURCES)


def test_a_request_with_many_sentences_returns_them_in_order() -> None:
    cfg = config(3)

    async def body(scheduler, _):
        return await scheduler.submit(SOURCES, cfg)

    results = asyncio.run(_with_scheduler(body, max_rows=7))  # two sentences at a time
    assert results == [solo(s, cfg) for s in SOURCES]


def test_steps_never_exceed_the_row_cap_and_several_requests_share_a_step() -> None:
    async def body(scheduler, recorder):
        await asyncio.gather(*(scheduler.submit([s], config(4)) for s in SOURCES))
        return recorder

    recorder = asyncio.run(_with_scheduler(body, max_rows=10))
    assert max(rows for rows, _ in recorder.steps) <= 10
    assert any(requests >= 2 for _, requests in recorder.steps)


def test_a_timed_out_request_gets_504_and_frees_its_rows_for_the_others() -> None:
    long = config(4, max_length=30, min_length=29)  # never stops early
    short = config(1, max_length=30, min_length=29)

    async def body(scheduler, recorder):
        survivor = asyncio.create_task(scheduler.submit([[5, 6]], short, timeout_s=60))
        with pytest.raises(DeadlineExceeded):  # 30 steps of 50 ms cannot end within 1 s
            await scheduler.submit([[7, 8, 3]], long, timeout_s=1.0)
        steps_at_timeout = len(recorder.steps)
        await survivor
        return recorder, steps_at_timeout

    recorder, at_timeout = asyncio.run(_with_scheduler(body, FakeDecoder(delay_s=0.05)))
    assert any(rows == 5 for rows, _ in recorder.steps[:at_timeout])  # both shared steps (4 + 1 rows)
    assert [rows for rows, _ in recorder.steps[at_timeout + 1 :]] == [1] * (
        len(recorder.steps) - at_timeout - 1
    )
    assert "timeout" in recorder.outcomes and "success" in recorder.outcomes


def test_a_cancelled_request_leaves_its_rows_and_the_others_finish() -> None:
    """A client that goes away cancels its request: no answer is owed, its rows leave at the next step,
    and the request beside it still gets its result."""
    long = config(4, max_length=30, min_length=29)  # never stops early
    short = config(1, max_length=30, min_length=29)

    async def body(scheduler, recorder):
        survivor = asyncio.create_task(scheduler.submit([[5, 6]], short, timeout_s=60))
        leaver = asyncio.create_task(scheduler.submit([[7, 8, 3]], long, timeout_s=60))
        await until(lambda: scheduler.active_rows == 5)  # both decoding (4 + 1 rows)
        leaver.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaver
        at_cancel = len(recorder.steps)
        return recorder, at_cancel, await survivor

    recorder, at_cancel, result = asyncio.run(_with_scheduler(body, FakeDecoder(delay_s=0.02)))
    assert len(result) == 1 and len(result[0][0].tokens) == 30
    assert [rows for rows, _ in recorder.steps[at_cancel + 1 :]] == [1] * (
        len(recorder.steps) - at_cancel - 1
    )
    assert "success" in recorder.outcomes and "timeout" not in recorder.outcomes


def test_a_full_queue_answers_429_with_retry_after() -> None:
    decoder = FakeDecoder()
    decoder.gate = threading.Event()  # hold the first step until the queue has filled

    async def body(scheduler, _):
        first = asyncio.create_task(scheduler.submit([[5]], config(1)))
        await until(lambda: scheduler.active_rows == 1)  # admitted; its step is blocked on the gate
        queued = asyncio.create_task(scheduler.submit([[6]], config(2)))  # needs 2 rows: waits
        await until(lambda: scheduler.queued == 1)
        with pytest.raises(Overloaded) as raised:
            await scheduler.submit([[7]], config(1))
        decoder.gate.set()
        await asyncio.gather(first, queued)
        return raised.value

    error = asyncio.run(_with_scheduler(body, decoder, max_rows=2, max_queue=1, retry_after_s=2.0))
    assert error.status == 429 and error.retry_after == 2.0


def test_a_call_may_run_steps_while_joiners_wait_until_one_makes_them_join_fraction(monkeypatch) -> None:
    """The steps each decoder call may run (several, for the compiled step) and its stop flag: while
    nothing waits, up to MAX_STEPS; a joiner below ``join_fraction`` does not stop the call in flight,
    and the next may run until it has waited ``join_wait_steps``; the joiner that makes the waiting
    ones the fraction stops the call after its step, and they join together."""
    from serving.decoding import stepper
    from serving.decoding.native_decoder import MAX_STEPS

    calls = []  # (steps allowed, stop flag as the call started, as it ended)
    original = stepper.DecodeBatch.step

    def recording(self, run_decoder, joining=0, steps=1):
        if self.stop is None:  # a batch of the reference decodings, not the scheduler's
            return original(self, run_decoder, joining, steps)
        start = int(self.stop[0])
        try:
            return original(self, run_decoder, joining, steps)
        finally:
            calls.append((steps, start, int(self.stop[0])))

    monkeypatch.setattr(stepper.DecodeBatch, "step", recording)
    join = [(0, SOURCES[:4], LONG), (1, [SOURCES[4]], LONG), (2, [SOURCES[5]], LONG)]
    _, encoder, _ = asyncio.run(_stepped_run(join, join_fraction=0.5, join_wait_steps=3))
    # call 1: the first joiner (1 < 0.5 x 4) came during it; call 2: it had waited 1 step of 3, and
    # the second joiner came during it
    assert calls[:3] == [(MAX_STEPS, 0, 0), (MAX_STEPS, 0, 0), (2, 0, 1)]
    assert encoder.sizes == [4, 2]


def test_a_failing_decoder_fails_its_requests_and_the_loop_keeps_serving() -> None:
    decoder = FakeDecoder()

    async def body(scheduler, _):
        decoder.fail_next = True
        with pytest.raises(ServingError, match="scripted decoder failure"):
            await scheduler.submit([[5, 6]], config(2))
        return await scheduler.submit([[5, 6]], config(2))

    assert asyncio.run(_with_scheduler(body, decoder)) == [solo([5, 6], config(2))]


def test_texts_whose_encoder_output_cannot_join_fail_at_once_and_the_running_request_finishes() -> None:
    """An encoder call whose outputs the batch cannot take fails its own requests when it happens (they
    were off the queue and in no batch: they used to wait for their deadline) and nothing else."""

    def encoder(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = fake_encoder(inputs)
        return {k: v for k, v in outputs.items() if k != "h0"} if (inputs["src_ids"] == 3).any() else outputs

    decoder = SteppedDecoder()
    scheduler = DecodingScheduler("fake", SPEC, encoder, decoder, SchedulerConfig(timeout_s=60))

    async def body():
        await scheduler.start()
        try:
            running = asyncio.create_task(scheduler.submit([[5, 6]], LONG))
            await until(lambda: len(decoder.entered) == 1)  # its first step waits for its turn
            broken = asyncio.create_task(scheduler.submit([[3, 4]], config(2)))
            await until(lambda: scheduler.queued == 1)
            decoder.run_freely()
            with pytest.raises(ServingError, match=r"encoder failed: the encoder did not return \['h0'\]"):
                await asyncio.wait_for(broken, 30)
            return await running
        finally:
            await scheduler.stop(grace_s=1.0)

    assert asyncio.run(body()) == [solo([5, 6], LONG)]


@pytest.mark.parametrize(
    ("cfg", "message"),
    [(config(9), "max_rows"), (config(2, max_length=41), "max_positions"), (config(2, eos_id=3), "eos")],
)
def test_impossible_decoding_settings_are_refused_with_the_setting_named(cfg, message) -> None:
    async def body(scheduler, _):
        with pytest.raises(ValueError, match=message):
            await scheduler.submit([[5]], cfg)

    asyncio.run(_with_scheduler(body, max_rows=8))


def test_an_empty_request_is_answered_without_decoding() -> None:
    async def body(scheduler, recorder):
        return await scheduler.submit([], config(2)), recorder.steps

    assert asyncio.run(_with_scheduler(body)) == ([], [])


class PoisonedDecoder(FakeDecoder):
    """NaN log-probs for every row whose source holds token 9: a failure that belongs to one request."""

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = super().__call__(inputs)
        poisoned = (
            (inputs["memory"][:, :, 0] == 9 * np.arange(1, inputs["memory"].shape[1] + 1))
            & inputs["src_mask"]
        ).any(1)
        outputs["log_probs"][poisoned] = np.nan
        return outputs


def test_a_poisoned_request_among_20_concurrent_fails_alone_and_the_others_are_unchanged() -> None:
    sources = [SOURCES[i % len(SOURCES)] + [3 + i % 5] for i in range(20)]
    configs = [config(1 + i % 4) for i in range(20)]

    async def body(scheduler, recorder):
        tasks = [asyncio.create_task(scheduler.submit([s], c)) for s, c in zip(sources, configs, strict=True)]
        poisoned = asyncio.create_task(scheduler.submit([[5, 9, 6]], config(3)))
        tasks.insert(7, poisoned)
        return await asyncio.gather(*tasks, return_exceptions=True), recorder

    results, recorder = asyncio.run(_with_scheduler(body, PoisonedDecoder()))
    error = results.pop(7)
    assert isinstance(error, UnprocessableInput) and error.status == 422 and "NaN" in str(error)
    assert [r[0] for r in results] == [solo(s, c) for s, c in zip(sources, configs, strict=True)]
    assert any(requests >= 10 for _, requests in recorder.steps)  # the poisoned rows shared steps
    assert sorted(recorder.outcomes) == ["failure"] + ["success"] * 20


def test_joiners_into_a_running_batch_are_grouped_into_one_encoder_call() -> None:
    join = [(0, SOURCES[:4], LONG), (1, [SOURCES[4]], LONG), (2, [SOURCES[5]], LONG)]
    decoder, encoder, _ = asyncio.run(_stepped_run(join, join_fraction=0.5, join_wait_steps=100))
    # 1 waiting < 0.5 x 4 running: the first joiner waits for the second, then both join at once
    assert encoder.sizes == [4, 2]
    assert decoder.entered[:4] == [4, 4, 4, 6]


def test_a_request_into_an_idle_batch_joins_at_once_and_a_lone_joiner_waits_at_most_join_wait_steps() -> None:
    join = [(0, SOURCES[:4], LONG), (1, [SOURCES[4]], LONG)]
    decoder, encoder, _ = asyncio.run(_stepped_run(join, join_fraction=1.0, join_wait_steps=2))
    assert decoder.entered[0] == 4  # no step ran before the first request joined
    assert encoder.sizes == [4, 1]
    assert decoder.entered[:5] == [4, 4, 4, 5, 5]  # queued after step 1, joined after step 3


def test_a_translation_reports_its_wait_to_join_the_batch_within_its_time() -> None:
    """What the statistics call a decoded request's queue: until its last sentence joined the batch.
    A lone joiner waits ``join_wait_steps`` (2) steps, so its wait spans at least the step the test
    lets run after it queued; a request into an idle batch waits for no step."""

    async def body():
        decoder, recorder = SteppedDecoder(), Recorder()
        scheduler = DecodingScheduler(
            "fake",
            SPEC,
            fake_encoder,
            decoder,
            SchedulerConfig(join_fraction=1.0, join_wait_steps=2),
            observer=recorder,
        )
        await scheduler.start()
        try:
            first = asyncio.create_task(scheduler.submit(SOURCES[:4], LONG))
            await until(lambda: len(decoder.entered) == 1)  # joined; its first step waits its turn
            second = asyncio.create_task(scheduler.submit([SOURCES[4]], LONG))
            await until(lambda: scheduler.queued == 1)
            queued_by = time.monotonic()  # the second request's clock started before this
            await decoder.advance()  # one step: the second has waited 1 of its 2
            not_joined_before = time.monotonic()
            decoder.run_freely()
            await asyncio.gather(first, second)
        finally:
            await scheduler.stop(grace_s=1.0)
        return recorder, not_joined_before - queued_by

    recorder, least = asyncio.run(body())
    waits = dict(zip(recorder.texts, zip(recorder.queued, recorder.seconds, strict=True), strict=True))
    assert recorder.outcomes == ["success", "success"] and set(waits) == {4, 1}
    (alone, alone_s), (joiner, joiner_s) = waits[4], waits[1]
    assert 0 <= alone <= alone_s and least > 0 and least <= joiner <= joiner_s


def test_with_join_wait_steps_0_every_waiting_request_joins_at_the_next_step() -> None:
    join = [(0, SOURCES[:4], LONG), (1, [SOURCES[4]], LONG), (2, [SOURCES[5]], LONG)]
    decoder, encoder, _ = asyncio.run(_stepped_run(join, join_fraction=1.0, join_wait_steps=0))
    assert encoder.sizes == [4, 1, 1]
    assert decoder.entered[:4] == [4, 4, 5, 6]


def test_an_idle_decode_thread_releases_its_decode_state_and_the_next_requests_get_their_solo_results() -> (
    None
):
    """After ``release_idle_s`` with nothing in flight or waiting, the decode thread starts a fresh batch
    (what the last requests grew goes back); a later burst decodes exactly as before and is released
    in turn."""
    cfg = config(4, min_length=4)

    async def body(scheduler, recorder):
        first_batch = scheduler._batch
        first = await asyncio.gather(*(scheduler.submit([s], cfg) for s in SOURCES))
        await until(lambda: scheduler.releases == 1)
        assert scheduler._batch is not first_batch and scheduler._batch.size == 0
        again = await asyncio.gather(*(scheduler.submit([s], cfg) for s in SOURCES))
        await until(lambda: scheduler.releases == 2)
        assert recorder.releases == [("fake", "decode")] * 2  # each one reported (kiln_memory_releases_total)
        return first, again

    first, again = asyncio.run(_with_scheduler(body, release_idle_s=0.05))
    want = [[solo(s, cfg)] for s in SOURCES]
    assert first == want and again == want


@pytest.mark.parametrize("fails", [False, True])
def test_an_idle_release_shrinks_the_encoders_arena_with_one_lone_eos_run_and_a_failing_shrink_harms_nothing(
    fails,
) -> None:
    """A runner that can shrink its memory arena (``run_encoder.shrink``, ONNX Runtime's) is asked to
    once per release, over one source of EOS alone; if that fails, the worker releases and answers on."""
    shrunk: list[dict[str, np.ndarray]] = []

    def encoder(inputs):
        return fake_encoder(inputs)

    def shrink(inputs):
        shrunk.append(inputs)
        if fails:
            raise RuntimeError("no arena here")

    encoder.shrink = shrink
    cfg = config(2)

    async def body(scheduler, _):
        first = await scheduler.submit(SOURCES[:2], cfg)
        await until(lambda: scheduler.releases == 1)
        again = await scheduler.submit(SOURCES[:2], cfg)
        await until(lambda: scheduler.releases == 2)
        return first, again

    first, again = asyncio.run(_with_scheduler(body, encoder=encoder, release_idle_s=0.05))
    assert first == again == [solo(s, cfg) for s in SOURCES[:2]]
    assert len(shrunk) == 2
    for inputs in shrunk:
        assert list(inputs) == ["src_ids"] and inputs["src_ids"].tolist() == [[SPEC["eos_id"]]]


@pytest.mark.parametrize("value", [0, -1.0])
def test_a_release_delay_that_is_not_positive_is_refused(value) -> None:
    with pytest.raises(ValueError, match="release_idle_s"):
        SchedulerConfig(release_idle_s=value)
