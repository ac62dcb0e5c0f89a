"""A worker of ``--workers`` keeps its metrics in files (prometheus_client's multiprocess mode), and
prometheus_client opened each kind's file (counters, histograms, ``max`` gauges) at that kind's first
series. A worker that met its open-file limit (clients' connections holding every descriptor) before it
had served a translation failed every decode step on the histogram's file: EMFILE, and its translations
waited their whole deadline (30 s), then were answered 500. The files are opened as the metrics are
made, so a worker at its limit records them as any other."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = """
import os, resource
from serving.metrics import GatewayMetrics

metrics = GatewayMetrics(worker=0)
child = metrics.child(metrics.requests, "m", "1", "success")  # a series made, as a request makes one
free = os.dup(0)  # the lowest free descriptor: at this limit no file can be opened any more
os.close(free)
resource.setrlimit(resource.RLIMIT_NOFILE, (free, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
try:
    open(os.devnull).close()
except OSError as exc:
    print("at the limit:", exc.strerror)
metrics.observe_decode_step("transformer", 8, 2, 0.01, 3)
metrics.observe_release("transformer", "decode")
metrics.last_inference.labels("m", "1").set(1.0)
print("recorded")
"""


def test_a_worker_at_its_open_file_limit_records_its_first_decode_step(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert "at the limit: Too many open files" in out.stdout, out.stdout + out.stderr[-2000:]
    assert out.returncode == 0 and "recorded" in out.stdout, out.stderr[-2000:]
