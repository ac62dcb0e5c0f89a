"""One client's large JSON bodies do not hold another's small one in the JSON parse process's queue.

The helper took bodies in arrival order: with 13 bodies of 64 MiB of JSON numbers (~2.5 s each to
parse) sent by one client ahead of it, another client's 300 KB KServe v2 body (~10 ms to parse) waited
past its 30 s deadline and was answered 504. Queued bodies are now handed to the helper smallest first
(a large one passed over by smaller ones for a bounded time only), one at a time (a small one at
the head handed on while the one before it is parsed: PIPELINE_BYTES).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from pathlib import Path

from serving.errors import Deadline
from serving.protocol.json_offload import JsonOffload
from tests.waiting import DEADLINE_S, until


def _parse_in_helper(tag: str, marks: str) -> str:
    """In the helper: writes down that it parsed ``tag``; the body tagged ``first`` waits for the gate."""
    if tag == "first" and multiprocessing.parent_process() is not None:
        Path(marks, "first.begun").touch()
        gate, started = Path(marks, "gate"), time.monotonic()
        while not gate.exists() and time.monotonic() - started < DEADLINE_S:
            time.sleep(0.005)  # (another process: no event to wait on)
    with open(Path(marks, "order"), "a") as order:
        order.write(tag + "\n")
    return tag


def test_a_small_body_is_parsed_before_large_bodies_queued_ahead_of_it(tmp_path) -> None:
    marks = str(tmp_path)

    async def scenario() -> list[str]:
        offload = JsonOffload(offload_bytes=1)
        try:
            first = asyncio.ensure_future(offload.call(8, _parse_in_helper, "first", marks))
            await until(lambda: Path(marks, "first.begun").exists())  # the helper is busy with it
            large = [
                asyncio.ensure_future(
                    offload.call(
                        64 << 20, _parse_in_helper, f"large{i}", marks, deadline=Deadline.from_now(60)
                    )
                )
                for i in range(3)
            ]
            await asyncio.sleep(0)
            small = asyncio.ensure_future(
                offload.call(300_000, _parse_in_helper, "small", marks, deadline=Deadline.from_now(60))
            )
            await asyncio.sleep(0)
            Path(marks, "gate").touch()
            answers = await asyncio.wait_for(asyncio.gather(first, *large, small), DEADLINE_S)
            assert answers == ["first", "large0", "large1", "large2", "small"], "each got its own answer"
            return Path(marks, "order").read_text().split()
        finally:
            offload.close()

    assert asyncio.run(scenario()) == ["first", "small", "large0", "large1", "large2"]


def test_a_large_body_is_passed_over_for_a_bounded_time_only() -> None:
    """Its turn is its arrival plus a second a MiB: bodies arriving later than that go behind it."""
    from serving.protocol.json_offload import ORDER_BYTES_S

    async def scenario() -> list[str]:
        offload = JsonOffload(offload_bytes=1)
        started: list[str] = []

        class Pool:  # a helper that records what it is handed and finishes when told
            def __init__(self) -> None:
                self.works: list = []

            def submit(self, fn, *args):  # noqa: ANN001, ANN202
                from concurrent.futures import Future

                started.append(args[0])  # the body's tag (no deadline: no _unless_late before it)
                self.works.append(Future())
                return self.works[-1]

        pool = Pool()
        offload._pool = pool  # type: ignore[assignment]
        calls = [asyncio.ensure_future(offload.call(8, _parse_in_helper, "busy", ""))]
        await asyncio.sleep(0)
        calls.append(asyncio.ensure_future(offload.call(2 << 20, _parse_in_helper, "large", "")))
        await asyncio.sleep(0)
        # a small body arriving more than 2 s after the 2 MiB one: its turn comes after the large one's
        ((turn, *rest),) = offload._queued
        offload._queued[0] = (turn - 2.5, *rest)
        calls.append(asyncio.ensure_future(offload.call(1, _parse_in_helper, "late small", "")))
        await asyncio.sleep(0)
        for i in range(3):  # each finished in the order handed (a small one is handed on before: two in hand)
            await until(lambda i=i: len(pool.works) > i)
            pool.works[i].set_result(started[i])
        await asyncio.wait_for(asyncio.gather(*calls), DEADLINE_S)
        return started

    assert ORDER_BYTES_S == 1 << 20
    assert asyncio.run(scenario()) == ["busy", "large", "late small"]


def test_a_large_body_is_passed_over_for_half_of_what_its_deadline_leaves_at_most() -> None:
    """A 64 MiB body's turn came 64 s after its arrival: under the 30 s default deadline, small bodies
    keeping the helper busy passed it over until its 504. Its turn is now at most half its time left."""

    async def scenario() -> tuple[float, float]:
        offload = JsonOffload(offload_bytes=1)

        class Pool:  # a helper busy with the first body for as long as the test runs
            def submit(self, fn, *args):  # noqa: ANN001, ANN202
                from concurrent.futures import Future

                return Future()

        offload._pool = Pool()  # type: ignore[assignment]
        calls = [asyncio.ensure_future(offload.call(8, _parse_in_helper, "busy", ""))]
        await asyncio.sleep(0)
        sent = time.monotonic()
        large = offload.call(64 << 20, _parse_in_helper, "large", "", deadline=Deadline.from_now(4))
        calls.append(asyncio.ensure_future(large))
        await asyncio.sleep(0)
        ((turn, *_),) = [entry for entry in offload._queued if entry[4] == 64 << 20]
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        return turn - sent, time.monotonic() - sent

    wait, elapsed = asyncio.run(scenario())
    assert wait <= 2.0 + elapsed, wait  # half of the 4 s its deadline left, not 64 s
