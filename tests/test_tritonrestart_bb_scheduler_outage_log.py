"""A Triton killed under translate traffic (``--triton-translate scheduler``) is a warning in the
gateway's log, not one a batch: every encoder call failed while Triton was down and each wrote the
same "encoder failed" warning (305 lines in seven seconds against a real Triton restarted under two
translating clients). Once a call works again, the next outage is a warning again."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest

from serving.decoding.scheduler import DecodingScheduler
from serving.decoding.scheduler_config import SchedulerConfig
from serving.errors import Unavailable
from tests.test_scheduler import LONG, SPEC, FakeDecoder, fake_encoder

DOWN = "Triton at 127.0.0.1:1 is unavailable: connection refused"


def _warned(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "encoder failed" in r.getMessage()
    ]


def test_an_encoder_down_for_many_batches_is_one_warning_an_outage(caplog) -> None:
    up = [False]

    def encoder(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not up[0]:
            raise Unavailable(DOWN, retry_after=1.0)
        return fake_encoder(inputs)

    scheduler = DecodingScheduler("fake", SPEC, encoder, FakeDecoder(), SchedulerConfig(timeout_s=60))

    async def translate() -> bool:
        try:
            await scheduler.submit([[5, 6]], LONG)
        except Unavailable:
            return False
        return True

    async def body() -> list[bool]:
        await scheduler.start()
        try:
            answered = [await translate() for _ in range(4)]  # an outage: four batches fail
            up[0] = True
            answered.append(await translate())  # Triton back
            up[0] = False
            answered += [await translate() for _ in range(2)]  # the next outage
            return answered
        finally:
            await scheduler.stop(grace_s=1.0)

    with caplog.at_level(logging.DEBUG, logger="serving.decoding.scheduler"):
        assert asyncio.run(body()) == [False] * 4 + [True] + [False] * 2
    line = f"translator fake: encoder failed: Unavailable: {DOWN}"
    assert _warned(caplog) == [line, line], caplog.text
