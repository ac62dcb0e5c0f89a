"""A gateway at its open-file limit (clients' connections holding every descriptor) cannot start its JSON
helper: ``ProcessPoolExecutor`` fails with EMFILE. That shortage passes once connections close, but the
helper was never tried again: every large JSON body of the gateway's life was parsed on the event loop,
the other requests waiting behind each. Now the body is parsed in place and the helper is tried again
after a pause (``RETRY_S``), said in a warning that names the limit."""

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


class _Pool:
    """A helper pool that runs each call at once, here; the first one made fails as EMFILE does."""

    made: list[_Pool] = []

    def __init__(self, **kwargs: Any) -> None:
        if not _Pool.made:
            _Pool.made.append(self)
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        _Pool.made.append(self)
        self.calls = 0

    def submit(self, fn: Any, *args: Any) -> Future:
        self.calls += 1
        done: Future = Future()
        done.set_result(fn(*args))
        return done

    def shutdown(self, **kwargs: Any) -> None:
        pass


def test_a_helper_that_met_the_open_file_limit_is_tried_again_after_the_pause(monkeypatch, caplog):
    monkeypatch.setattr(json_offload, "ProcessPoolExecutor", _Pool)
    monkeypatch.setattr(_Pool, "made", [])
    monkeypatch.setattr(json_offload, "RETRY_S", 0.0, raising=False)

    async def main() -> tuple[int, int]:
        offload = JsonOffload(offload_bytes=16)
        for _ in range(2):
            parsed = await offload.parse_infer(BODY.encode(), None, "m", "")
            assert parsed.request.inputs["x"].shape == (1, 4)
        offload.close()
        return offload.offload_bytes, len(_Pool.made)

    with caplog.at_level(logging.INFO, logger=json_offload.__name__):
        offload_bytes, pools = asyncio.run(main())
    assert offload_bytes == 16  # large bodies still go to the helper
    assert pools == 2 and _Pool.made[1].calls == 2  # started for the second body (its start call, the parse)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "open-file limit" in warnings[0] and "tried again" in warnings[0]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_within_the_pause_large_bodies_are_parsed_in_place_without_a_new_try(monkeypatch):
    monkeypatch.setattr(json_offload, "ProcessPoolExecutor", _Pool)
    monkeypatch.setattr(_Pool, "made", [])
    monkeypatch.setattr(json_offload, "RETRY_S", 3600.0, raising=False)

    async def main() -> None:
        offload = JsonOffload(offload_bytes=16)
        for _ in range(3):
            parsed = await offload.parse_infer(BODY.encode(), None, "m", "")
            assert parsed.request.inputs["x"].shape == (1, 4)
        offload.close()

    asyncio.run(main())
    assert len(_Pool.made) == 1  # the one failed start
