"""The perf_analyzer binary itself: where it is installed, the command line of one run, its CSV.

perf_analyzer is a C++ binary. Without Triton's SDK container it comes from the ``tritonclient``
2.48 wheel (the last one that ships it; newer wheels and this index's ``perf-analyzer`` do not), which
``make perf-analyzer`` installs under ``.venv/perf-analyzer`` with the two shared libraries it needs
(``libb64`` from the distribution, ``libcudart.so.12`` from ``nvidia-cuda-runtime-cu12``; no GPU is
used). Where it is missing the bench says so and keeps its own load generator.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

ENV_BINARY = "KILN_PERF_ANALYZER"
INSTALL_HINT = "install it with `make perf-analyzer` (see the README, 'perf_analyzer')"
# perf_analyzer's CSV columns (microseconds) -> our names (milliseconds).
_LATENCIES = {
    "p50 latency": "p50_ms",
    "p90 latency": "p90_ms",
    "p95 latency": "p95_ms",
    "p99 latency": "p99_ms",
    # the server's own split of a request (its statistics extension; Kiln's gateway and Triton alike)
    "Server Queue": "server_queue_ms",
    "Server Compute Input": "server_input_ms",
    "Server Compute Infer": "server_infer_ms",
    "Server Compute Output": "server_output_ms",
}


@dataclass(frozen=True)
class PerfAnalyzer:
    """A runnable perf_analyzer binary and the library path it needs."""

    binary: Path
    library_path: str = ""

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.library_path:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (self.library_path, env.get("LD_LIBRARY_PATH")) if p
            )
        return env


def find_perf_analyzer(venv: Path | None = None) -> PerfAnalyzer | None:
    """``$KILN_PERF_ANALYZER`` where it is set (and nothing else: a build named there and missing is not
    replaced by another one), else ``.venv/perf-analyzer/bin/perf_analyzer``, then ``perf_analyzer`` on PATH."""
    prefix = (venv or Path(sys.prefix)) / "perf-analyzer"
    named = os.environ.get(ENV_BINARY)
    for candidate in (named,) if named else (prefix / "bin" / "perf_analyzer", shutil.which("perf_analyzer")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            cudart = sorted(prefix.glob("nvidia/cuda_runtime/lib"))
            return PerfAnalyzer(Path(candidate), str(cudart[0]) if cudart else "")
    return None


def command(
    tool: PerfAnalyzer,
    url: str,
    model: str,
    concurrency: int,
    csv_path: Path,
    *,
    protocol: str = "grpc",
    window_ms: int = 1500,
    rate: float | None = None,
    streaming: bool = False,
) -> list[str]:
    """One perf_analyzer run, one image per request, CSV with percentiles: a closed loop at
    ``concurrency``, or with ``rate`` an open loop sending that many requests per second; with
    ``streaming``, every request over gRPC streams (``ModelStreamInfer``) instead of unary calls.

    The open loop uses the asynchronous API: with synchronous calls perf_analyzer's request-rate mode
    keeps at most ``--max-threads`` (4) requests in flight, so a server whose latency exceeds
    4 / rate is sent fewer requests than the rate (a closed loop of 4 that reports a lower
    throughput and a tamer tail; 292-380 of 500 requests/s were sent to the gateway that way)."""
    load = (
        ["--request-rate-range", f"{rate:g}:{rate:g}", "--async"]
        if rate
        else ["--concurrency-range", f"{concurrency}:{concurrency}"]
    )
    return [
        str(tool.binary),
        "-m",
        model,
        "-u",
        url,
        "-i",
        protocol,
        "-b",
        "1",
        *load,
        *(["--streaming"] if streaming else []),
        "--measurement-interval",
        str(window_ms),
        "--max-trials",
        "3",
        "--stability-percentage",
        "1000",
        "--percentile",
        "50",
        "-f",
        str(csv_path),
    ]


def parse_csv(path: Path) -> dict[str, float]:
    """Throughput (infer/s), client latency percentiles and the server's split (queue, compute input /
    infer / output: averages a request, from the server's statistics) in ms from perf_analyzer's ``-f``
    CSV."""
    with path.open(newline="", encoding="utf-8") as handle:
        row = next(csv.DictReader(handle))
    result = {"throughput_rps": float(row["Inferences/Second"])}
    for column, name in _LATENCIES.items():
        if column in row:
            result[name] = float(row[column]) / 1e3
    return result
