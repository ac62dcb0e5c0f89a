"""Under a process or thread limit (a container's pids limit, ``ulimit -u``) that the models' threads
had nearly reached, the gateway died of SIGABRT once they had loaded, nothing in its log: uvloop's libuv
starts its thread pool (4 threads) at uvicorn's bind, after the models, and aborts where a thread cannot
start. The pool now starts before the models load, and a limit too low for it stops the gateway in one
line naming the limit."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import uvloop

from serving.threads import start_loop_threads

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = """
import os
import uvicorn
from serving.app import GatewayServer

tasks = lambda: len(os.listdir("/proc/self/task"))
seen = {}

async def app(scope, receive, send):
    assert scope["type"] == "lifespan"
    await receive()
    seen["at_lifespan"] = tasks()
    server.should_exit = True
    await send({"type": "lifespan.startup.complete"})
    await receive()
    await send({"type": "lifespan.shutdown.complete"})

config = uvicorn.Config(app, host="127.0.0.1", port=0, loop="uvloop", lifespan="on", log_config=None)
server = GatewayServer(config)
before = tasks()
server.run()
print("pool started before the lifespan:", seen["at_lifespan"] >= before + 4)
"""


def test_the_event_loop_s_thread_pool_starts_before_the_models_load():
    if not Path("/proc/self/task").is_dir():
        pytest.skip("counting threads needs /proc (Linux)")
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert "pool started before the lifespan: True" in out.stdout, out.stdout + out.stderr[-2000:]


def test_a_thread_limit_too_low_for_the_pool_stops_the_gateway_in_one_line(monkeypatch):
    starts = []
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name == "kiln-thread-probe" and len(starts) == 2:
            raise RuntimeError("can't start new thread")
        starts.append(thread)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(SystemExit) as stopped:
        uvloop.run(start_loop_threads())
    message = str(stopped.value)
    assert "cannot start its threads" in message and "pids limit" in message and "ulimit -u" in message
    assert "\n" not in message and all(not t.is_alive() for t in starts)
