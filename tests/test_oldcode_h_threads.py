"""``--cpu-policy auto`` leaves no thread under SCHED_BATCH once every decode thread is idle."""

from __future__ import annotations

import os
import sys
import threading

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SCHED_BATCH is Linux's")


def test_a_thread_the_loop_started_while_busy_is_back_under_sched_other_once_idle():
    """A thread inherits its creator's policy: one the event loop started while a translation decoded
    (asyncio's default executor) kept SCHED_BATCH after the loop went back."""
    from serving.threads import BusyLoopPolicy

    release = threading.Event()
    spawn, spawned, tids = threading.Event(), threading.Event(), {}

    def park(key: str) -> None:
        tids[key] = threading.get_native_id()
        if key == "loop":
            spawned.set()
            assert spawn.wait(timeout=30)
            spawn.clear()
            threading.Thread(target=park, args=("child",), daemon=True).start()
        else:
            spawned.set()
        release.wait(timeout=30)

    loop = threading.Thread(target=park, args=("loop",), daemon=True)
    loop.start()
    try:
        assert spawned.wait(timeout=30)
        spawned.clear()
        policy = BusyLoopPolicy(tids["loop"])  # not the shared one: this test's own
        policy.busy()
        spawn.set()  # the loop, under SCHED_BATCH now, starts a thread
        assert spawned.wait(timeout=30)
        assert os.sched_getscheduler(tids["child"]) == os.SCHED_BATCH  # inherited
        policy.idle()
        assert os.sched_getscheduler(tids["loop"]) == os.SCHED_OTHER
        assert os.sched_getscheduler(tids["child"]) == os.SCHED_OTHER
    finally:
        release.set()
        loop.join(timeout=30)
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # this thread untouched


def test_the_json_helper_started_while_the_loop_is_under_sched_batch_runs_under_the_gateways_policy(
    monkeypatch,
):
    """The helper is forked from the event loop's thread on the first large body: started while a
    translation decoded, it inherited SCHED_BATCH and parsed every large body under it for good."""
    import asyncio

    from serving import threads
    from serving.protocol.json_offload import JsonOffload

    monkeypatch.setattr(threads, "_applied", ["normal"])  # what `python -m serving` set at start-up
    seen: dict[str, object] = {}

    def loop_thread() -> None:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # as BusyLoopPolicy.busy leaves it
        offload = JsonOffload(offload_bytes=1)

        async def scenario() -> int:
            return await offload.call(10, os.sched_getscheduler, 0)  # run in the helper

        try:
            seen["helper"] = asyncio.run(scenario())
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            seen["error"] = exc
        finally:
            offload.close()

    thread = threading.Thread(target=loop_thread)
    thread.start()
    thread.join(timeout=60)
    assert seen == {"helper": os.SCHED_OTHER}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # this thread untouched
