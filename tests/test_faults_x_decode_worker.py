"""A decode worker whose own machinery fails (not a model call, which fails its batch alone): the worker
serves on where it can, and where its thread dies the requests of its batch are answered at once and the
worker restarts (tests/test_ha_decode_worker_restart.py); one down for good makes the gateway say the
translator is not ready, instead of requests waiting for their deadline behind a dead thread."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from serving.decoding import scheduler as scheduler_module
from serving.decoding.scheduler import DecodingScheduler
from serving.decoding.scheduler_config import SchedulerConfig
from serving.decoding.translator import Translator
from serving.errors import Unavailable
from serving.gateway import Gateway
from tests.test_scheduler import SOURCES, SPEC, FakeDecoder, _with_scheduler, config, fake_encoder, solo
from tests.waiting import DEADLINE_S, until


def test_an_idle_release_that_fails_keeps_the_decode_worker_serving(monkeypatch) -> None:
    """Handing back the idle worker's memory failed (here glibc's trim): the memory stays held and the
    next request is decoded. It used to end the decode thread, and every later request of the worker
    waited for its deadline (a 504), the gateway still ready."""
    failed: list[int] = []

    def no_trim() -> None:
        failed.append(1)
        raise MemoryError("scripted release failure")

    monkeypatch.setattr(scheduler_module, "return_freed_memory", no_trim)
    cfg = config(2)

    async def body(scheduler, _):
        first = await scheduler.submit(SOURCES[:1], cfg)
        await until(lambda: bool(failed))
        again = await scheduler.submit(SOURCES[:1], cfg, timeout_s=DEADLINE_S)
        return first, again, scheduler.died

    first, again, died = asyncio.run(_with_scheduler(body, release_idle_s=0.05))
    assert first == again == [solo(SOURCES[0], cfg)]
    assert died == ""


def _breaks_once(scheduler: DecodingScheduler) -> None:
    """The scheduler's next fresh batch fails to be made (after a failed step: the loop's own handler
    fails), once."""
    real = scheduler._new_batch

    def broken():
        scheduler._new_batch = real
        raise MemoryError("no memory for a fresh batch")

    scheduler._new_batch = broken


def test_a_decode_thread_that_dies_answers_its_requests_503_naming_why_and_serves_the_next() -> None:
    """A failed step whose recovery fails too ends the decode thread's run: the request in flight is
    answered 503 naming the error (it used to wait for its deadline), and the worker, restarted, decodes
    the next one (it used to refuse every later request until the gateway restarted)."""
    decoder = FakeDecoder()

    async def body(scheduler, _):
        decoder.fail_next = True
        _breaks_once(scheduler)
        with pytest.raises(
            Unavailable,
            match=r"decode worker died \(MemoryError: no memory for a fresh batch\); it is restarting",
        ) as dead:
            await scheduler.submit([[5, 6]], config(2), timeout_s=DEADLINE_S)
        assert dead.value.retry_after == SchedulerConfig().retry_after_s  # a 503 with Retry-After
        assert scheduler.died == ""
        return await scheduler.submit(SOURCES[:1], config(2), timeout_s=DEADLINE_S)

    assert asyncio.run(_with_scheduler(body, decoder)) == [solo(SOURCES[0], config(2))]


def _translator(schedulers: list[DecodingScheduler]) -> Translator:
    return Translator("fake", SimpleNamespace(), schedulers)


def test_a_translator_decodes_on_its_workers_left_and_is_stopped_once_none_is() -> None:
    """One of two decode workers stopped: the translator's requests go to the other one (the least
    loaded could be the stopped one), and it is not stopped; both stopped, it says why (worker_restarts=0:
    each stays down at its first death; restarts: tests/test_ha_decode_worker_restart.py)."""
    decoders = [FakeDecoder(), FakeDecoder()]
    no_restarts = SchedulerConfig(worker_restarts=0)
    schedulers = [
        DecodingScheduler(f"fake#{i}", SPEC, fake_encoder, decoders[i], no_restarts) for i in (0, 1)
    ]
    translator = _translator(schedulers)
    cfg = config(2)

    async def body():
        for scheduler in schedulers:
            await scheduler.start()
        try:
            decoders[0].fail_next = True
            _breaks_once(schedulers[0])
            with pytest.raises(Unavailable):
                await schedulers[0].submit([[5, 6]], cfg, timeout_s=DEADLINE_S)
            assert translator.stopped() == ""
            answers = [await translator.scheduler().submit([s], cfg) for s in SOURCES[:3]]
            decoders[1].fail_next = True
            _breaks_once(schedulers[1])
            with pytest.raises(Unavailable):
                await translator.scheduler().submit([[5, 6]], cfg, timeout_s=DEADLINE_S)
            return answers, translator.stopped()
        finally:
            for scheduler in schedulers:
                await scheduler.stop(grace_s=1.0)

    answers, stopped = asyncio.run(body())
    assert answers == [[solo(s, cfg)] for s in SOURCES[:3]]
    assert "decode worker 'fake#0' stopped: MemoryError" in stopped
    assert "decode worker 'fake#1' stopped: MemoryError" in stopped


class _ReadyBackend:
    runs_translators_in_gateway = False

    def is_live(self) -> bool:
        return True

    async def is_ready(self) -> bool:
        return True


def test_the_gateway_is_not_ready_while_a_translator_has_no_decode_worker_left() -> None:
    scheduler = DecodingScheduler("fake", SPEC, fake_encoder, FakeDecoder(), SchedulerConfig())
    gateway = Gateway(_ReadyBackend(), None)
    gateway.translators = SimpleNamespace(translators={"fake": _translator([scheduler])}, failed={})
    assert asyncio.run(gateway.is_ready())
    scheduler.died = "MemoryError: no memory for a fresh batch"
    assert not asyncio.run(gateway.is_ready())
