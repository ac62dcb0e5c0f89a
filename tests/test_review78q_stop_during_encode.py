"""A stop's grace lets the requests in flight finish: one whose encoder call was running when the stop
began (taken off the queue, its rows not reserved yet) was in neither count the grace waits on, so a
10 s grace answered it 503 "shutting down" as soon as that call ended, one decoder step later."""

from __future__ import annotations

import asyncio
import threading

from serving.decoding.scheduler import DecodingScheduler
from serving.decoding.scheduler_config import SchedulerConfig
from tests.test_scheduler import LONG, SPEC, FakeDecoder, fake_encoder, solo
from tests.waiting import DEADLINE_S


def test_a_request_whose_encoder_call_runs_at_the_stop_is_decoded_within_the_grace() -> None:
    encoding, release = threading.Event(), threading.Event()

    def encoder(inputs: dict) -> dict:
        encoding.set()
        release.wait(DEADLINE_S)  # held until the stop has begun
        return fake_encoder(inputs)

    scheduler = DecodingScheduler("fake", SPEC, encoder, FakeDecoder(), SchedulerConfig())

    async def body() -> object:
        await scheduler.start()
        request = asyncio.ensure_future(scheduler.submit([[5, 6, 7]], LONG, timeout_s=DEADLINE_S))
        await asyncio.to_thread(encoding.wait, DEADLINE_S)
        stop = asyncio.ensure_future(scheduler.stop(grace_s=DEADLINE_S))
        await asyncio.sleep(0)  # the stop has looked at what is in flight
        release.set()
        await stop
        return (await asyncio.gather(request, return_exceptions=True))[0]

    assert asyncio.run(body()) == [solo([5, 6, 7], LONG)]
