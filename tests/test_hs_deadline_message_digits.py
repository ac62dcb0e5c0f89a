"""Since a request's deadline covers its waits before the model, the model is given the time the
deadline left, so a 504 at the model read "request timed out after 29.9968 s" where the request's limit
was 30 s; the time is written to three significant digits (30, 0.05, 1.5)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from serving.errors import DeadlineExceeded
from serving.execution.batcher import BatchPolicy
from tests.test_batcher import Recorder, busy_instance, rows, run, with_batcher
from tests.test_scheduler import FakeDecoder, _with_scheduler, config


@pytest.mark.parametrize(("left", "shown"), [(0.0499873, "0.05"), (0.1499632, "0.15")])
def test_a_504_at_the_model_names_the_time_it_was_given_to_three_digits(left: float, shown: str) -> None:
    gate = threading.Event()
    model = Recorder(gate)

    async def body(batcher):
        running = await busy_instance(batcher, model)  # the instance busy: the request waits its deadline
        with pytest.raises(DeadlineExceeded) as refused:
            await batcher.submit(rows(1, 1), timeout_s=left)
        gate.set()
        await running
        return refused.value.message

    message = run(with_batcher(BatchPolicy(max_batch_size=1, max_queue_size=4), model, body))
    assert message == f"model 'm': request timed out after {shown} s"


def test_a_translation_504_names_the_time_it_was_given_to_three_digits() -> None:
    long = config(4, max_length=30, min_length=29)  # 30 steps of 50 ms: past its deadline

    async def body(scheduler, recorder):
        with pytest.raises(DeadlineExceeded) as refused:
            await scheduler.submit([[7, 8, 3]], long, timeout_s=0.1499632)
        return refused.value.message

    message = asyncio.run(_with_scheduler(body, FakeDecoder(delay_s=0.05)))
    assert message == "translation did not finish within 0.15s"
