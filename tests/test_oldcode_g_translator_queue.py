"""``--max-queue-size`` bounds the requests waiting for a translator (per model, as README says and as
Triton's ``max_queue_size`` does), whatever its number of decode workers: each worker's own cap alone
let ``--decode-workers N`` queue N times as many before a 429."""

from __future__ import annotations

import asyncio
import threading

import pytest

from serving.decoding.options import DecodingOptions
from serving.decoding.scheduler import DecodingScheduler
from serving.decoding.scheduler_config import SchedulerConfig
from serving.decoding.translator import Translator
from serving.errors import Overloaded
from tests.test_scheduler import SPEC, FakeDecoder, fake_encoder
from tests.waiting import until


class _Codec:
    """Text -> one source id; ids -> their repr (the scheduler's FakeDecoder is the model)."""

    def encode(self, texts: list[str], batched: bool = True) -> list[list[int]]:
        return [[5 + len(t) % 3] for t in texts]

    def decode(self, hypotheses: list[list[int]], batched: bool = True) -> list[str]:
        return [str(h) for h in hypotheses]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_a_translators_queue_holds_max_queue_requests_whatever_its_decode_workers(workers: int) -> None:
    decoders = [FakeDecoder() for _ in range(workers)]
    for decoder in decoders:
        decoder.gate = threading.Event()  # each worker's first step waits: the others queue behind it
    config = SchedulerConfig(max_rows=1, max_queue=2, retry_after_s=3.0)
    schedulers = [DecodingScheduler(f"w{i}", SPEC, fake_encoder, d, config) for i, d in enumerate(decoders)]
    translator = Translator("t", _Codec(), schedulers)
    options = DecodingOptions(beam_size=1, max_length=6)

    async def body():
        await translator.start()
        tasks = []
        try:
            for i in range(workers):  # one running on each worker
                tasks.append(asyncio.create_task(translator.translate([f"run{i}"], options)))
                await until(lambda n=i + 1: sum(s.active_rows for s in schedulers) == n)
            for i in range(2):  # max_queue waiting
                tasks.append(asyncio.create_task(translator.translate([f"wait{i}"], options)))
                await until(lambda n=i + 1: sum(s.queued for s in schedulers) == n)
            extra = asyncio.create_task(translator.translate(["one too many"], options))
            await until(lambda: extra.done() or sum(s.queued for s in schedulers) > 2)  # refused, or queued
            for decoder in decoders:
                decoder.gate.set()
            answers = await asyncio.gather(*tasks)
            (refused,) = await asyncio.gather(extra, return_exceptions=True)
        finally:
            for decoder in decoders:
                decoder.gate.set()
            await translator.stop(1.0)
        return refused, answers

    refused, answers = asyncio.run(body())
    assert isinstance(refused, Overloaded)  # was: queued on a worker whose own queue had room
    assert refused.status == 429 and refused.retry_after == 3.0
    assert "2 requests already waiting" in str(refused)
    assert len(answers) == workers + 2 and all(len(a) == 1 for a in answers)
