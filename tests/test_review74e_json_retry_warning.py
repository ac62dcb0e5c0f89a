"""A JSON helper that cannot start on a shortage that lasts (a gateway kept at its open-file or pids
limit) is tried again every ``RETRY_S``: each failed try logged the warning again, with the INFO line
of the start before it, two lines every 10 s for as long as the shortage lasted. One warning an
outage now, the retries quiet, and one line when the helper has started after all."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
from concurrent.futures import Future
from typing import Any

from serving.protocol import json_offload
from serving.protocol.json_offload import JsonOffload

BODY = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.5] * 4}]})
FAILED_STARTS = 3  # the pools made before one starts


class _Pool:
    """A helper pool that runs each call here, at once; the first FAILED_STARTS made fail as EMFILE does."""

    made = 0

    def __init__(self, **kwargs: Any) -> None:
        _Pool.made += 1
        if _Pool.made <= FAILED_STARTS:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    def submit(self, fn: Any, *args: Any) -> Future:
        done: Future = Future()
        done.set_result(fn(*args))
        return done

    def shutdown(self, **kwargs: Any) -> None:
        pass


def test_a_shortage_that_lasts_is_warned_about_once_and_the_helper_s_return_said(monkeypatch, caplog):
    monkeypatch.setattr(json_offload, "ProcessPoolExecutor", _Pool)
    monkeypatch.setattr(_Pool, "made", 0)
    monkeypatch.setattr(json_offload, "RETRY_S", 0.0)

    async def main() -> None:
        offload = JsonOffload(offload_bytes=16)
        for _ in range(FAILED_STARTS + 2):
            parsed = await offload.parse_infer(BODY.encode(), None, "m", "")
            assert parsed.request.inputs["x"].shape == (1, 4)
        offload.close()

    with caplog.at_level(logging.INFO, logger=json_offload.__name__):
        asyncio.run(main())
    assert _Pool.made == FAILED_STARTS + 1  # tried at each body until one started, then kept
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO]
    warnings = [message for level, message in lines if level == logging.WARNING]
    assert len(warnings) == 1 and "cannot start now" in warnings[0], lines
    starting = [message for _, message in lines if message.startswith("starting the JSON parse")]
    assert len(starting) == 1, lines
    assert "has started" in lines[-1][1], lines
