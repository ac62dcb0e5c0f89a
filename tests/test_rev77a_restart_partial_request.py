"""A decode worker that dies with a request partly admitted (some of its texts in the batch, the rest
waiting for rows) answers that request 503 and takes its waiting texts off the queue: during the
restart's backoff they counted as waiting (kiln_queue_depth, --max-queue-size, the worker's load),
and a stop waited for them until its grace ran out, for a request already answered."""

from __future__ import annotations

import asyncio
import time

import pytest

from serving.decoding.scheduler import DecodingScheduler
from serving.decoding.scheduler_config import SchedulerConfig
from serving.errors import Unavailable
from tests.test_faults_x_decode_worker import _breaks_once
from tests.test_scheduler import SOURCES, SPEC, FakeDecoder, Recorder, config, fake_encoder
from tests.waiting import DEADLINE_S


def test_a_partly_admitted_request_answered_by_a_death_no_longer_waits_in_the_queue() -> None:
    decoder, observer = FakeDecoder(), Recorder()
    # two sentences of beam 2 at a time: a request of four leaves two waiting; a backoff that outlasts
    # the test, so nothing but the death itself takes them off the queue
    policy = SchedulerConfig(max_rows=4, restart_backoff_s=30.0, restart_backoff_max_s=30.0)
    scheduler = DecodingScheduler("fake", SPEC, fake_encoder, decoder, policy, observer=observer)

    async def body() -> tuple[int, int, float]:
        await scheduler.start()
        decoder.fail_next = True  # the first step fails, and so does its recovery: the thread dies
        _breaks_once(scheduler)
        with pytest.raises(Unavailable, match="decode worker died .* it is restarting"):
            await scheduler.submit(SOURCES[:4], config(2), timeout_s=DEADLINE_S)
        assert scheduler.restarting  # in its backoff
        queued, load = scheduler.queued, scheduler.load
        started = time.monotonic()
        await scheduler.stop(grace_s=DEADLINE_S)  # nothing left to wait for
        return queued, load, time.monotonic() - started

    queued, load, took = asyncio.run(body())
    assert (queued, load) == (0, 0)
    assert took < DEADLINE_S / 2
    assert observer.outcomes == ["failure"]  # answered once
