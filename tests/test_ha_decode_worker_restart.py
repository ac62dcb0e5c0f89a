"""A decode worker whose thread dies on an error its loop does not catch is restarted in place (a fresh
batch, the same thread, name and sessions) after a bounded backoff, instead of serving on with one worker
fewer until the gateway restarted; a crash that recurs at every start stops the restarts, and a stop
during the backoff leaves no thread behind and restarts nothing."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from serving.decoding.scheduler import DecodingScheduler
from serving.decoding.scheduler_config import SchedulerConfig
from serving.decoding.translator import Translator
from serving.errors import Unavailable
from serving.gateway import Gateway
from serving.metrics import GatewayMetrics
from tests.test_deployfit_liveness import _LiveBackend
from tests.test_faults_x_decode_worker import _breaks_once
from tests.test_scheduler import SOURCES, SPEC, FakeDecoder, Recorder, config, fake_encoder, solo
from tests.waiting import DEADLINE_S, until


class _Deaths(Recorder):
    """A Recorder that also keeps each decode-thread death's outcome (kiln_decode_worker_deaths_total)."""

    def __init__(self) -> None:
        super().__init__()
        self.deaths: list[tuple[str, str]] = []

    def observe_worker_death(self, model: str, outcome: str) -> None:
        self.deaths.append((model, outcome))


def _gateway(translator: Translator) -> Gateway:
    gateway = Gateway(_LiveBackend(), None)
    gateway.translators = SimpleNamespace(translators={translator.name: translator}, failed={})
    return gateway


def _kill(scheduler: DecodingScheduler, decoder: FakeDecoder) -> None:
    """The next step fails and so does its recovery (a fresh batch): the error escapes the loop."""
    decoder.fail_next = True
    _breaks_once(scheduler)


def test_a_killed_decode_worker_is_restarted_and_decodes_the_next_request(caplog) -> None:
    decoder, observer = FakeDecoder(), _Deaths()
    scheduler = DecodingScheduler(
        "fake", SPEC, fake_encoder, decoder, SchedulerConfig(), observer=observer, thread_name="kdec9.0-fake"
    )
    cfg = config(2)

    async def body():
        await scheduler.start()
        thread = scheduler._thread
        try:
            _kill(scheduler, decoder)
            with pytest.raises(Unavailable, match=r"decode worker died \(MemoryError: no memory") as dead:
                await scheduler.submit([[5, 6]], cfg, timeout_s=DEADLINE_S)
            assert dead.value.retry_after == SchedulerConfig().retry_after_s
            answers = [await scheduler.submit([s], cfg, timeout_s=DEADLINE_S) for s in SOURCES[:2]]
            assert scheduler._thread is thread and thread.is_alive()  # restarted in place, not replaced
            return answers
        finally:
            await scheduler.stop(grace_s=1.0)

    with caplog.at_level(logging.WARNING, logger="serving.decoding.scheduler"):
        answers = asyncio.run(body())
    assert answers == [[solo(s, cfg)] for s in SOURCES[:2]]  # the right answers, not just answers
    assert scheduler.died == scheduler.restarting == ""
    assert observer.deaths == [("fake", "restarted")]
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    died = [m for level, m in lines if level == logging.ERROR and "decode worker died" in m]
    restarted = [m for level, m in lines if level == logging.WARNING and "decode worker restarted" in m]
    assert len(died) == 1 and "MemoryError: no memory for a fresh batch" in died[0], lines
    assert len(restarted) == 1 and "MemoryError" in restarted[0], lines


def test_a_worker_that_keeps_dying_stops_restarting_and_the_translator_says_why() -> None:
    """Its fresh batch can never be made: each restart dies at once. After ``worker_restarts`` restarts
    within the window it stays down, and the translator (not ready, not live) names why."""
    decoder, observer = FakeDecoder(), GatewayMetrics()
    policy = SchedulerConfig(worker_restarts=2, restart_backoff_s=0.005, restart_backoff_max_s=0.01)
    scheduler = DecodingScheduler("fake", SPEC, fake_encoder, decoder, policy, observer=observer)
    translator = Translator("fake", SimpleNamespace(), [scheduler])
    gateway = _gateway(translator)

    def never():
        raise MemoryError("no memory for a fresh batch")

    async def body():
        await scheduler.start()
        try:
            decoder.fail_next = True
            scheduler._new_batch = never
            with pytest.raises(Unavailable, match="decode worker died"):
                await scheduler.submit([[5, 6]], config(2), timeout_s=DEADLINE_S)
            await until(lambda: bool(scheduler.died))
            with pytest.raises(Unavailable, match="is not running: its decode worker stopped"):
                await scheduler.submit([[5, 6]], config(2), timeout_s=DEADLINE_S)
            return translator.stopped(), translator.gone(), await gateway.is_ready(), gateway.is_live()
        finally:
            del scheduler._new_batch  # the stop makes one
            await scheduler.stop(grace_s=1.0)

    stopped, gone, ready, live = asyncio.run(body())
    assert "MemoryError: no memory for a fresh batch (it died 3 times within 60 s: not restarted)" in stopped
    assert gone == stopped and not ready and not live
    assert observer.sample("kiln_decode_worker_deaths_total", model="fake", outcome="restarted") == 2
    assert observer.sample("kiln_decode_worker_deaths_total", model="fake", outcome="stopped") == 1


def test_a_stop_during_the_backoff_leaves_no_thread_and_restarts_nothing() -> None:
    """While the restart waits, the translator is not ready (no worker can decode) but live; a request
    that arrives waits for the restart, and a stop meanwhile ends the thread at once and answers it."""
    decoder = FakeDecoder()
    policy = SchedulerConfig(restart_backoff_s=30.0, restart_backoff_max_s=30.0)
    scheduler = DecodingScheduler("fake", SPEC, fake_encoder, decoder, policy, thread_name="kdec9.1-fake")
    translator = Translator("fake", SimpleNamespace(), [scheduler])
    gateway = _gateway(translator)
    fresh: list[int] = []
    real_fresh = getattr(scheduler, "_fresh_state", None)  # (none before restarts existed)

    def counted() -> None:
        fresh.append(1)
        real_fresh()

    scheduler._fresh_state = counted

    async def body():
        await scheduler.start()
        thread = scheduler._thread
        _kill(scheduler, decoder)
        with pytest.raises(Unavailable, match="decode worker died"):
            await scheduler.submit([[5, 6]], config(2), timeout_s=DEADLINE_S)
        await until(lambda: bool(scheduler.restarting))
        reason = translator.stopped()
        ready, live = await gateway.is_ready(), gateway.is_live()
        waiting = asyncio.ensure_future(scheduler.submit([[5, 6]], config(2), timeout_s=DEADLINE_S))
        await until(lambda: scheduler.queued == 1)
        started = time.monotonic()
        await scheduler.stop(grace_s=0.05)
        took = time.monotonic() - started
        with pytest.raises(Unavailable, match="is shutting down"):
            await waiting
        return thread, reason, ready, live, took

    thread, reason, ready, live, took = asyncio.run(body())
    assert "decode worker 'fake' is restarting (it died: MemoryError: no memory for a fresh" in reason
    assert not ready and live
    assert took < 5.0 and not thread.is_alive()  # not the 30 s backoff
    assert not [t for t in threading.enumerate() if t is thread]
    assert fresh == [] and scheduler._thread is None  # nothing restarted after the stop


def test_the_restart_policy_the_docs_give_is_the_codes() -> None:
    root = Path(__file__).resolve().parents[1]
    readme, interface = (root / "README.md").read_text(), (root / "docs/translator-interface.md").read_text()
    policy = SchedulerConfig()
    assert (policy.worker_restarts, policy.restart_window_s) == (5, 60.0)
    assert (policy.restart_backoff_s, policy.restart_backoff_max_s) == (0.1, 5.0)
    assert "after a backoff of 0.1 s doubling up to 5 s" in readme
    assert "one that dies more than 5 times within 60 s" in readme
    assert "(more than 5 deaths within 60 s)" in readme
    assert "restart_backoff_s` (0.1 s)" in interface and "`restart_window_s` (60 s)" in interface
    assert "`restart_backoff_max_s` (5 s)" in interface and "`worker_restarts` (5)" in interface


def test_while_one_worker_restarts_the_translator_decodes_on_the_other_and_stays_ready() -> None:
    decoders = [FakeDecoder(), FakeDecoder()]
    policy = SchedulerConfig(restart_backoff_s=30.0, restart_backoff_max_s=30.0)
    schedulers = [DecodingScheduler(f"fake#{i}", SPEC, fake_encoder, decoders[i], policy) for i in (0, 1)]
    translator = Translator("fake", SimpleNamespace(), schedulers)
    gateway = _gateway(translator)
    cfg = config(2)

    async def body():
        await translator.start()
        try:
            _kill(schedulers[0], decoders[0])
            with pytest.raises(Unavailable, match="decode worker died"):
                await schedulers[0].submit([[5, 6]], cfg, timeout_s=DEADLINE_S)
            await until(lambda: bool(schedulers[0].restarting))
            answers = [await translator.scheduler().submit([s], cfg, timeout_s=5.0) for s in SOURCES[:3]]
            return answers, translator.stopped(), await gateway.is_ready()
        finally:
            await translator.stop(grace_s=0.05)

    answers, stopped, ready = asyncio.run(body())
    assert answers == [[solo(s, cfg)] for s in SOURCES[:3]]
    assert stopped == "" and ready
