"""Wait for a state instead of sleeping a fixed time: tests that race a clock flake on a busy machine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

DEADLINE_S = 30.0  # generous: only a broken server takes this long, a slow machine never does


async def until(check: Callable[[], bool], timeout_s: float = DEADLINE_S) -> None:
    """Yield to the event loop until ``check()`` holds; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout_s:g} s")
        await asyncio.sleep(0.002)


def eventually(check: Callable[[], bool], timeout_s: float = DEADLINE_S) -> bool:
    """Poll ``check()`` from a thread until it holds (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False
