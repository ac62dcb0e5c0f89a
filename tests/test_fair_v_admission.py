"""Admission is fair across requests: a light request behind a heavy one (more sentences than the row
budget holds) joins at the heavy one's next turn, not after its every sentence has joined, and the heavy
one keeps getting turns while light ones keep arriving."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

from serving.decoding.admission import Job, pick
from serving.decoding.scheduler_config import SchedulerConfig
from tests.test_scheduler import FakeDecoder, _with_scheduler, config, fake_encoder
from tests.waiting import until

HEAVY = [[4 + i % 5, 3 + i % 6, 5, 6 + i % 3, 7, 8, 3, 4 + i % 2] for i in range(8)]  # 8 texts
LIGHT = [8, 8]


def test_a_light_request_behind_a_heavy_one_joins_before_the_heavy_ones_last_sentence() -> None:
    """8 texts at beam 4 over 8 rows: 2 run, 6 wait. A one-text request sent meanwhile waited until all
    6 had joined (admission was FIFO by sentence: the heavy request's next sentence was always first),
    so its latency was the heavy request's whole decode less its last sentence's."""
    decoder = FakeDecoder()
    decoder.gate = threading.Event()  # hold the first step until the light request waits too
    encoded: list[list[list[int]]] = []  # the sources of each encoder call, in order

    def encoder(inputs):
        encoded.append([[int(t) for t in row if t not in (0, 2)] for row in inputs["src_ids"]])
        return fake_encoder(inputs)

    async def body(scheduler, _):
        heavy = asyncio.create_task(scheduler.submit(HEAVY, config(4, max_length=40)))
        await until(lambda: scheduler.queued == 1 and scheduler.active_rows > 0)  # 2 in, blocked
        light = asyncio.create_task(scheduler.submit([LIGHT], config(1, max_length=3)))
        await until(lambda: scheduler.queued == 2)
        decoder.gate.set()
        return await asyncio.gather(heavy, light)

    heavy, light = asyncio.run(_with_scheduler(body, decoder, encoder, max_rows=8))
    assert len(heavy) == len(HEAVY) and len(light) == 1
    call = {tuple(s): i for i, sources in enumerate(encoded) for s in sources}
    assert call[tuple(LIGHT)] < call[tuple(HEAVY[-1])], encoded


def _job(texts: int, beam: int) -> Job:
    return Job(
        sources=[[5]] * texts,
        config=config(beam),
        future=None,  # type: ignore[arg-type]  # pick never touches it
        deadline=time.monotonic() + 60,
    )


def test_picks_take_one_sentence_of_each_waiting_request_in_turn_so_none_starves() -> None:
    """Round-robin by request: the heavy request's turn comes once per round however many light ones
    arrive, and each light one's comes after at most one heavy sentence."""
    cfg = SchedulerConfig(max_rows=4)
    heavy, light = _job(3, 4), [_job(1, 1) for _ in range(4)]
    waiting = deque([heavy, light[0], light[1]])
    assert pick(waiting, 4, cfg, take=True) == [(heavy, 0)]  # its turn; then it goes behind the others
    assert list(waiting) == [light[0], light[1], heavy]
    waiting.extend(light[2:])  # arrivals queue behind the heavy request's next turn
    assert pick(waiting, 4, cfg, take=True) == [(light[0], 0), (light[1], 0)]  # heavy's 4 rows do not fit
    assert list(waiting) == [heavy, light[2], light[3]]
    assert pick(waiting, 4, cfg, take=True) == [(heavy, 1)]
    assert pick(waiting, 6, cfg, take=True) == [(light[2], 0), (light[3], 0), (heavy, 2)]
    assert not waiting and heavy.next_source == 3 and heavy.admitted is not None


def test_a_look_ahead_pick_takes_nothing() -> None:
    cfg = SchedulerConfig()
    heavy, light = _job(3, 4), _job(1, 1)
    waiting = deque([heavy, light])
    assert pick(waiting, 9, cfg, take=False) == [(heavy, 0), (light, 0), (heavy, 1)]
    assert list(waiting) == [heavy, light] and heavy.next_source == 0 and light.admitted is None
