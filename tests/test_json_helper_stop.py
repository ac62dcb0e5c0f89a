"""The JSON helper process goes with the gateway: ``ProcessPoolExecutor.shutdown(wait=False)`` left it
(and its forkserver) running for ever once the gateway exited, since the pool's thread that tells the
worker to stop went with the process and the worker holds both ends of its call queue's pipe."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import httpx
import numpy as np

from serving.protocol.json_offload import JsonOffload
from tests.repo_fixtures import SIZE, build_classifier_repository
from tests.test_gateway_lifecycle import _gateway
from tests.waiting import eventually


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone, only not yet reaped
        return stat.read().rpartition(")")[2].split()[0] != "Z"


def test_closing_the_offload_ends_its_helper_process() -> None:
    offload = JsonOffload(offload_bytes=16)
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.5] * 4}]})
    parsed = asyncio.run(offload.parse_infer(body.encode(), None, "m", ""))
    assert parsed.request.inputs["x"].shape == (1, 4)
    pids = [p.pid for p in offload._pool._processes.values()]
    assert pids
    offload.close()
    assert not [pid for pid in pids if _alive(pid)]


def test_a_gateway_stopped_after_a_large_json_body_leaves_no_process_behind(tmp_path, short_tmpdir) -> None:
    repository = build_classifier_repository(tmp_path / "repo")
    image = np.zeros((1, SIZE, SIZE, 1), np.uint8)
    body = {
        "inputs": [
            {
                "name": "images",
                "datatype": "UINT8",
                "shape": list(image.shape),
                "data": image.ravel().tolist(),
            }
        ]
    }
    tmp = short_tmpdir  # the gateway's TMPDIR, to see what it leaves there
    flags, log = ("--json-offload-bytes", "64"), tmp_path / "gateway.log"
    with _gateway(repository, *flags, log=log, env={**os.environ, "TMPDIR": str(tmp)}) as (proc, http):
        answer = httpx.post(f"http://127.0.0.1:{http}/v2/models/lenet/infer", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)  # one process ends by the SIGTERM uvicorn raises again once drained

        def group_gone() -> bool:  # the gateway ran in a session of its own: its helpers are in its group
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return True
            return False

        assert eventually(group_gone, 30), log.read_text()
    # its exit handlers ran before the SIGTERM ended it: by the signal's default action multiprocessing's
    # directory (pymp-*, the helper's forkserver socket) stayed at every stop (serving.app.end_by_sigterm)
    left = sorted(p.name for p in tmp.iterdir() if p.name != ".ses")  # ONNX Runtime's own, one, reused
    assert left == [], f"{left} left in TMPDIR:\n{log.read_text()}"
