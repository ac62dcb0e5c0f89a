"""The gateway's stop (``JsonOffload.close``) while the JSON helper starts on a thread (the first large
body, serving.protocol.json_offload): close() found no pool yet and returned, then the start finished
and kept a helper process whose pool nobody shut down. A start under way is now waited for and
stopped; a body that asked before the stop and reaches the start after it is parsed in place."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

from serving.protocol import json_offload
from serving.protocol.json_offload import JsonOffload


class FakePool:
    """A ProcessPoolExecutor without a process: runs each call at once, records its shutdown."""

    def __init__(self, *args, **kwargs) -> None:
        self._processes: dict = {}
        self.shut_down = False

    def submit(self, fn, *args, **kwargs) -> Future:
        done: Future = Future()
        done.set_result(fn(*args, **kwargs))
        return done

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self.shut_down = True


class WatchedLock:
    """``JsonOffload._starting``, saying when a thread named ``closer`` comes to it, and holding a
    helper thread (any other but the main one) at it until ``let_in`` is set."""

    def __init__(self, reached: threading.Event, let_in: threading.Event) -> None:
        self.lock, self.reached, self.let_in = threading.Lock(), reached, let_in

    def __enter__(self) -> None:
        name = threading.current_thread().name
        if name == "closer":
            self.reached.set()
        elif name != "MainThread":
            assert self.let_in.wait(30)
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def _large_body_in_thread(offload: JsonOffload, results: list) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(asyncio.run(offload.call(10, len, b"ab"))))
    thread.start()
    return thread


def test_a_helper_starting_when_the_gateway_stops_is_stopped_too(monkeypatch) -> None:
    entered, go, reached = threading.Event(), threading.Event(), threading.Event()
    pools: list[FakePool] = []

    def starting(*args, **kwargs) -> FakePool:  # a start of 150-230 ms, held until close() came
        entered.set()
        assert go.wait(30)
        pools.append(FakePool())
        return pools[-1]

    monkeypatch.setattr(json_offload, "ProcessPoolExecutor", starting)
    offload = JsonOffload(offload_bytes=1)
    always = threading.Event()
    always.set()
    offload._starting = WatchedLock(reached, always)
    results: list[int] = []
    body = _large_body_in_thread(offload, results)
    try:
        assert entered.wait(30)

        def close() -> None:
            offload.close()
            reached.set()  # returned: it did not wait for the start

        closer = threading.Thread(target=close, name="closer")
        closer.start()
        assert reached.wait(30)  # close() came to the start under way (or returned past it)
    finally:
        go.set()
    body.join(30)
    closer.join(30)
    assert results == [2]
    assert len(pools) == 1 and pools[0].shut_down, "a helper left running after the gateway's stop"
    assert offload._pool is None


def test_a_body_that_reaches_the_start_after_the_stop_starts_no_helper(monkeypatch) -> None:
    asked, closed = threading.Event(), threading.Event()
    started: list[object] = []
    monkeypatch.setattr(json_offload, "ProcessPoolExecutor", lambda *a, **k: started.append(1) or FakePool())
    offload = JsonOffload(offload_bytes=1)

    class Asking(WatchedLock):
        def __enter__(self) -> None:
            if threading.current_thread().name != "MainThread":
                asked.set()
            super().__enter__()

    offload._starting = Asking(threading.Event(), closed)
    results: list[int] = []
    body = _large_body_in_thread(offload, results)
    try:
        assert asked.wait(30)  # its thread is about to start the helper
        offload.close()  # the gateway stops first
    finally:
        closed.set()
    body.join(30)
    assert results == [2]  # parsed in place
    assert started == [], "a helper started after the gateway's stop"
    offload.close()
