"""A bench killed outright (``kill -9``, the OOM killer) while an engine job measures takes the job's
process with it: it measured on, every batch size of the job at full load, after the bench was gone
(seconds to minutes of cores, by the profile), then died writing a result nobody read
(``kiln.processes.end_with_parent``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.killed_parent import ends_within, kill, killed_at_end, said_pid

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


def test_an_engine_job_ends_when_the_bench_running_it_is_killed() -> None:
    bench = subprocess.Popen([sys.executable, "-c", BENCH], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    with killed_at_end(bench) as started:
        job = said_pid(bench.stdout, "measuring ")
        assert job is not None, "the job never started"
        started.append(job)
        kill(bench)
        assert ends_within(job, 10), "the engine job measured on after the bench was killed"
