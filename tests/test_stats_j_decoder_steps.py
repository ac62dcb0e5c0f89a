"""A translator's decoder steps count the decoder calls that ran: once every request in the decode
batch was answered (its client left), the scheduler's next turn dropped their rows and ran nothing,
yet counted a step of 0 rows and 0 requests, in ``kiln_decoder_steps_total`` and so in the
translator's statistics (``execution_count``), and as zeros in the per-step histograms."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.test_scheduler import FakeDecoder, _with_scheduler, config
from tests.waiting import until


class HeldDecoder(FakeDecoder):
    """A FakeDecoder whose calls wait for ``gate``, saying when one has begun (``entered``)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, inputs):
        self.entered.set()
        return super().__call__(inputs)


def test_no_decoder_step_is_counted_once_the_only_request_left() -> None:
    decoder = HeldDecoder()

    async def body(scheduler, recorder):
        leaver = asyncio.create_task(scheduler.submit([[7, 8, 3]], config(4, max_length=30, min_length=29)))
        assert await asyncio.to_thread(decoder.entered.wait, 10)  # its first step is running
        leaver.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaver
        decoder.gate.set()
        # that step ends, then the scheduler's next turn drops the request's rows (two turns)
        await until(lambda: scheduler._steps >= 2)
        return recorder

    recorder = asyncio.run(_with_scheduler(body, decoder))
    assert decoder.calls == [1]  # one decoder call ran (its first step: one row per sentence)
    assert recorder.steps == [(1, 1)], recorder.steps
