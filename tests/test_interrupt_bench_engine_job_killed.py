"""A bench killed outright (``kill -9``, the OOM killer) while an engine job measures takes the job's
process with it: it measured on, every batch size of the job at full load, after the bench was gone
(seconds to minutes of cores, by the profile), then died writing a result nobody read
(``kiln.processes.end_with_parent``)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pidfds are Linux's")

BENCH = textwrap.dedent(
    """
    from bench.engines import EngineJob, run_jobs
    from tests.test_interrupt_bench_engine_job_killed import measuring
    run_jobs([EngineJob("onnxruntime", "fp32", "model.onnx", (4, 4, 1), (1,), 1, 1.0)], print, measuring)
    """
)


def measuring(_job: object) -> None:
    """The job's runner, in its spawned process: says its pid, then measures for ever."""
    import threading

    print("measuring", os.getpid(), flush=True)
    threading.Event().wait()


def _ends_within(pid: int, timeout_s: float) -> bool:
    """Whether process ``pid`` (not this one's child) ends within ``timeout_s``: its pidfd turns readable."""
    fd = os.pidfd_open(pid)
    try:
        return bool(select.select([fd], [], [], timeout_s)[0])
    finally:
        os.close(fd)


def test_an_engine_job_ends_when_the_bench_running_it_is_killed() -> None:
    bench = subprocess.Popen([sys.executable, "-c", BENCH], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    job = None
    try:
        for line in bench.stdout:
            if line.startswith("measuring "):
                job = int(line.split()[1])
                break
        assert job is not None, "the job never started"
        bench.kill()
        bench.wait()
        assert _ends_within(job, 10), "the engine job measured on after the bench was killed"
    finally:
        bench.kill()
        bench.wait()
        if job is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(job, signal.SIGKILL)
