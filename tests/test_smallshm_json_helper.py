"""A gateway on a full /dev/shm (a container's 64 MiB, taken by something else) cannot start its JSON
helper: the helper's queues make their semaphores there, and ``ProcessPoolExecutor`` itself raised ENOSPC,
so every large JSON body was answered 500 ``internal error`` with a traceback, the start tried again at
each one. They are parsed in place instead, and the log says once that /dev/shm is full and what to do."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from serving.protocol import json_offload
from serving.protocol.json_offload import JsonOffload
from tests.small_shm import needs_small_shm, on_small_shm

BODY = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.5] * 4}]})

PROGRAM = f"""
import asyncio, logging
from serving.protocol.json_offload import JsonOffload

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

async def main():
    offload = JsonOffload(offload_bytes=16)
    for _ in range(2):
        parsed = await offload.parse_infer({BODY!r}.encode(), None, "m", "")
        print("parsed", parsed.request.inputs["x"].shape)
    offload.close()

asyncio.run(main())
"""


def _no_semaphore(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as multiprocessing's SemLock raises it


def test_large_bodies_on_a_full_dev_shm_are_parsed_in_place_and_the_log_names_it_once(monkeypatch, caplog):
    monkeypatch.setattr(json_offload, "ProcessPoolExecutor", _no_semaphore)

    async def main() -> list[tuple[int, ...]]:
        offload = JsonOffload(offload_bytes=16)
        shapes = [(await offload.parse_infer(BODY.encode(), None, "m", "")).request.inputs["x"].shape]
        shapes.append((await offload.parse_infer(BODY.encode(), None, "m", "")).request.inputs["x"].shape)
        offload.close()
        return shapes

    with caplog.at_level(logging.INFO, logger=json_offload.__name__):
        assert asyncio.run(main()) == [(1, 4), (1, 4)]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "cannot start" in errors[0], errors
    assert "/dev/shm" in errors[0] and "is full" in errors[0] and "--shm-size" in errors[0]


@needs_small_shm
def test_a_real_full_dev_shm_leaves_large_bodies_parsed_in_place():
    fill = "head -c 65536 /dev/zero > /dev/shm/filler"  # the 64 KiB tmpfs, full
    out = subprocess.run(
        [*on_small_shm("64k", fill), sys.executable, "-c", PROGRAM],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["parsed (1, 4)", "parsed (1, 4)"], out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "/dev/shm, where its semaphores are made, is full" in errors[0], out.stderr
