"""The gateway's threads carry their names to the OS (``top -H``, ``ps -L``, ``/proc/<pid>/task``)."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from serving.threads import NAME_BYTES, name_os_thread

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc/<pid>/task/<tid>/comm is Linux's")


def _os_name(thread: threading.Thread) -> str:
    return Path(f"/proc/self/task/{thread.native_id}/comm").read_text().strip()


def test_a_thread_takes_its_python_name_or_the_one_given_cut_to_whole_characters_linux_keeps():
    seen: dict[str, object] = {}
    named = threading.Event()
    done = threading.Event()

    def body(name: str | None) -> None:
        seen["ok"] = name_os_thread(name)
        seen["os"] = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()
        named.set()
        done.wait(timeout=30)

    for given, python_name, want in (
        (None, "kiln-decode-transformer", "kiln-decode-tra"),
        ("kiln-x", "ignored", "kiln-x"),
        ("é" * 10, "t", "é" * 7),  # 2 bytes each: whole characters within the 15 bytes
    ):
        named.clear(), done.clear()
        thread = threading.Thread(target=body, args=(given,), name=python_name)
        thread.start()
        assert named.wait(timeout=30)
        assert seen == {"ok": True, "os": want} and _os_name(thread) == want  # read from outside too
        done.set()
        thread.join(timeout=30)
    assert len("kiln-decode-tra") == NAME_BYTES


def test_the_batchers_execution_threads_name_themselves():
    from serving.execution.batcher import BatchPolicy, DynamicBatcher

    async def scenario() -> list[str]:
        batcher = DynamicBatcher(
            "resnet18", lambda instance, inputs: {"y": inputs["x"]}, BatchPolicy(max_batch_size=4)
        )
        batcher.start()
        try:  # an answered request: its instance thread has run past its first statement
            await batcher.submit({"x": np.zeros((1, 1), np.float32)})
            return [_os_name(thread) for thread in batcher._threads]
        finally:
            await batcher.stop(grace_s=5)

    assert asyncio.run(scenario()) == ["kiln-batch-resn"]
