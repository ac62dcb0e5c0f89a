"""A stop's grace waits for sentences whose encoder call runs (``_admitting``, set before they leave the
queue). A pick that raised left that flag set: set before the ``try`` that clears it, so once its request
was answered (its deadline passed), a stop with nothing waiting, admitting or reserved waited out its
whole grace."""

from __future__ import annotations

import asyncio
import time

import pytest

from serving.decoding import scheduler as scheduler_module
from serving.decoding.scheduler import DecodingScheduler
from serving.decoding.scheduler_config import SchedulerConfig
from serving.errors import DeadlineExceeded
from tests.test_scheduler import LONG, SPEC, FakeDecoder, fake_encoder

GRACE_S = 2.5


def test_a_pick_that_raised_leaves_no_admission_for_the_stop_to_wait_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken_pick(*args: object, **kwargs: object) -> list:
        raise RuntimeError("pick failed")

    monkeypatch.setattr(scheduler_module, "pick", broken_pick)
    scheduler = DecodingScheduler("fake", SPEC, fake_encoder, FakeDecoder(), SchedulerConfig())

    async def body() -> tuple[object, float]:
        await scheduler.start()
        answer = await asyncio.gather(
            scheduler.submit([[5, 6, 7]], LONG, timeout_s=0.2), return_exceptions=True
        )
        started = time.monotonic()
        await scheduler.stop(grace_s=GRACE_S)
        return answer[0], time.monotonic() - started

    answer, stop_s = asyncio.run(body())
    assert isinstance(answer, DeadlineExceeded), answer
    assert stop_s < GRACE_S / 2, f"the stop waited {stop_s:.2f} s on an admission that had failed"
