"""A gateway whose TMPDIR is too long for a Unix socket path under it (multiprocessing's forkserver
listens on ``$TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX``, at most 107 bytes) cannot start its JSON helper:
every large JSON body was answered 500 ``internal error: OSError``, the start tried again at each one.
They are parsed in place instead, and the log says why once, naming TMPDIR."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROGRAM = """
import asyncio, json, logging
from serving.protocol.json_offload import JsonOffload

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.5] * 4}]})

async def main():
    offload = JsonOffload(offload_bytes=16)
    for _ in range(2):
        parsed = await offload.parse_infer(body.encode(), None, "m", "")
        print("parsed", parsed.request.inputs["x"].shape)
    offload.close()

asyncio.run(main())
"""


def test_large_bodies_are_parsed_in_place_and_the_log_names_tmpdir_once(tmp_path: Path):
    long = tmp_path / ("t" * max(1, 120 - len(str(tmp_path))))  # the socket's path past 107 bytes
    long.mkdir()
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        cwd=root,
        env={**os.environ, "TMPDIR": str(long)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["parsed (1, 4)", "parsed (1, 4)"], out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "cannot start" in errors[0] and f"TMPDIR={long}" in errors[0], out.stderr
    assert "set TMPDIR to a shorter directory" in errors[0]
