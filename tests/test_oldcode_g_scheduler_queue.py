"""A decode worker's load and queue follow its requests at once: what was answered or abandoned no longer
counts for choosing a worker (the translator's least-loaded choice) or against ``max_queue`` (429)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from serving.errors import DeadlineExceeded, ServingError
from tests.test_scheduler import FakeDecoder, _with_scheduler, config
from tests.waiting import until


def test_a_worker_no_longer_counts_an_answered_requests_rows_when_its_answer_goes_out() -> None:
    """The rows were recounted only after the answers were posted; posting hands the GIL to the event
    loop, whose clients then saw an emptied worker still loaded (measured: with 2 workers and 2 clients
    in a loop, 45 of 80 choices saw a stale load, and requests doubled up on one worker)."""

    async def body(scheduler, _):
        loads: list[int] = []
        post = scheduler._post_all

        def recording(answers):
            if answers:
                loads.append(scheduler.load)  # on the decode thread, as the answers go out
            post(answers)

        scheduler._post_all = recording
        for source in ([5, 6, 7], [8], [4, 4, 5]):
            await scheduler.submit([source], config(4))
            assert scheduler.load == 0  # idle: the next request's choice sees it so
        return loads

    assert asyncio.run(_with_scheduler(body)) == [0, 0, 0]


def test_a_worker_whose_decoder_failed_counts_no_load_when_the_failures_go_out() -> None:
    decoder = FakeDecoder()

    async def body(scheduler, _):
        loads: list[int] = []
        post = scheduler._post_all

        def recording(answers):
            if answers:
                loads.append(scheduler.load)
            post(answers)

        scheduler._post_all = recording
        decoder.fail_next = True
        with pytest.raises(ServingError):
            await scheduler.submit([[5, 6, 7], [8]], config(4))
        assert scheduler.load == 0
        return loads

    assert asyncio.run(_with_scheduler(body, decoder)) == [0]


def _held_behind_a_running_request(timeout_s: float, abandon):
    """A running request blocked in its step, a second one (``timeout_s``) queued behind it
    (max_queue=1) and abandoned by ``abandon(task)``; then a third request. Returns (queued, load) just
    after the second was abandoned, and whether the third was refused."""
    decoder = FakeDecoder()
    decoder.gate = threading.Event()  # the running request's step waits until the test says

    async def body(scheduler, _):
        first = asyncio.create_task(scheduler.submit([[5]], config(1)))
        await until(lambda: scheduler.active_rows == 1)  # admitted; its step is blocked
        second = asyncio.create_task(scheduler.submit([[6]], config(2), timeout_s=timeout_s))  # 2 rows: waits
        await until(lambda: scheduler.queued == 1)
        await abandon(second)
        seen = scheduler.queued, scheduler.load
        third = asyncio.create_task(scheduler.submit([[7]], config(1)))
        await asyncio.sleep(0)  # submitted: queued, or refused with 429
        refused = third.done() and third.exception() is not None
        decoder.gate.set()
        await first
        if not refused:
            await third
        return seen, refused

    return asyncio.run(_with_scheduler(body, decoder, max_rows=2, max_queue=1))


def test_a_request_cancelled_while_queued_leaves_the_queue_at_once_and_a_new_one_is_not_refused() -> None:
    async def cancel(task):
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    (queued, load), refused = _held_behind_a_running_request(30.0, cancel)
    assert (queued, load) == (0, 1)  # only the running request's row
    assert not refused  # was: 429 "1 requests already waiting", for a client that had gone


def test_a_request_expired_while_queued_leaves_the_queue_at_once() -> None:
    async def expire(task):  # its deadline passes while the decode thread is held in the step
        (error,) = await asyncio.gather(task, return_exceptions=True)
        assert isinstance(error, DeadlineExceeded)

    (queued, load), refused = _held_behind_a_running_request(0.05, expire)
    assert (queued, load) == (0, 1)
    assert not refused
