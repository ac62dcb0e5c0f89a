"""A large JSON body whose request's deadline passed while it waited for the JSON parse process is not
parsed there once its turn comes: the request was answered 504 already. The helper's pool hands it
the next two bodies before it is done with the one it parses (Python's ProcessPoolExecutor moves them
into its call queue, where a cancel no longer reaches them), so a body 504'd in those places was parsed
for nobody, every body behind it waiting that long more (a batch of 8 images as JSON: ~1.2 s)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from serving.errors import Deadline, DeadlineExceeded
from serving.protocol.json_offload import JsonOffload
from tests.waiting import DEADLINE_S, until


def _parse_in_helper(tag: str, marks: str) -> str:
    """In the helper: notes that it began ``tag``; the body tagged ``first`` waits for the test's gate."""
    Path(marks, f"{tag}.begun").touch()
    if tag == "first" and multiprocessing.parent_process() is not None:
        gate, started = Path(marks, "gate"), time.monotonic()
        while not gate.exists() and time.monotonic() - started < DEADLINE_S:
            time.sleep(0.005)  # (another process: no event to wait on)
    return tag


def test_a_body_past_its_deadline_in_the_helpers_queue_is_not_parsed_when_its_turn_comes(tmp_path) -> None:
    marks = str(tmp_path)

    async def scenario() -> tuple[DeadlineExceeded, str]:
        offload = JsonOffload(offload_bytes=1)
        try:
            first = asyncio.ensure_future(offload.call(8, _parse_in_helper, "first", marks))
            await until(lambda: Path(marks, "first.begun").exists())  # the helper is busy with it
            late = offload.call(8, _parse_in_helper, "late", marks, deadline=Deadline.from_now(0.1))
            with pytest.raises(DeadlineExceeded) as refused:  # (wait_for: a test that fails, never hangs)
                await asyncio.wait_for(late, DEADLINE_S / 3)
            Path(marks, "gate").touch()
            assert await first == "first"
            after = await offload.call(8, _parse_in_helper, "after", marks)  # the helper went through "late"
            return refused.value, after
        finally:
            offload.close()

    error, after = asyncio.run(scenario())
    assert error.status == 504
    assert "waited for the JSON parse process (8 bytes of JSON, 1 bodies before it there)" in error.message
    assert after == "after", "each request got its own body's answer"
    assert sorted(os.listdir(marks)) == ["after.begun", "first.begun", "gate"], "the late body was parsed"
