"""Triton's own load tool, perf_analyzer, driving the gateway and Triton side by side (as users will).

perf_analyzer is a C++ binary. Without Triton's SDK container it comes from the ``tritonclient``
2.48 wheel (the last one that ships it; newer wheels and this index's ``perf-analyzer`` do not), which
``make perf-analyzer`` installs under ``.venv/perf-analyzer`` with the two shared libraries it needs
(``libb64`` from the distribution, ``libcudart.so.12`` from ``nvidia-cuda-runtime-cu12``; no GPU is
used). Where it is missing the bench says so and keeps its own load generator.

Runs are interleaved (each round visits every server at every concurrency) and summarized by medians,
because the machine is shared and noisy.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import ratio
from bench.triton_layouts import TARGET_CONCURRENCIES, TritonLayout, start_layouts, triton_layouts
from serving import process_tree

log = logging.getLogger(__name__)

STREAM = "grpc-stream"  # the protocol of rows measured with --streaming (gRPC ModelStreamInfer)
STREAM_TIMEOUT_S = 90.0  # a streaming run takes ~10 s; past this its server has stopped answering
MIN_DELIVERED = 0.95  # an open-loop run counts when it delivered this share of its offered rate

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
    """``$KILN_PERF_ANALYZER``, then ``.venv/perf-analyzer/bin/perf_analyzer``, then ``perf_analyzer`` on PATH."""
    prefix = (venv or Path(sys.prefix)) / "perf-analyzer"
    for candidate in (
        os.environ.get(ENV_BINARY),
        prefix / "bin" / "perf_analyzer",
        shutil.which("perf_analyzer"),
    ):
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
    with path.open(newline="") as handle:
        row = next(csv.DictReader(handle))
    result = {"throughput_rps": float(row["Inferences/Second"])}
    for column, name in _LATENCIES.items():
        if column in row:
            result[name] = float(row[column]) / 1e3
    return result


class ServerGone(RuntimeError):
    """The server a perf_analyzer run was measuring ended during the run."""


POLL_S = 0.25  # how often a run looks at whether its server still runs
PROBE_AFTER_S = 1.5  # when a run reads its server's connections (perf_analyzer has opened them all)


def run_once(
    tool: PerfAnalyzer,
    url: str,
    model: str,
    concurrency: int,
    timeout_s: float = 300.0,
    alive: Callable[[], str | None] | None = None,
    probe: Callable[[], str | None] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run perf_analyzer once; an unstable or failed run raises with the tool's own last words.

    ``alive``: None while the server runs, else how it ended; it is asked every ``POLL_S`` and a run
    whose server ended is stopped at once (``ServerGone``). perf_analyzer itself waited on a dead
    server's stream until the timeout (Triton 2.51 crashing under ``--streaming``: 90 s lost a run).
    ``probe`` is asked once, ``PROBE_AFTER_S`` into the run, how the server's workers hold its
    connections (:func:`connection_split`); its answer is the sample's ``connections``."""
    with tempfile.TemporaryDirectory(prefix="kiln-pa-") as tmp:
        csv_path = Path(tmp) / "pa.csv"
        cmd = command(tool, url, model, concurrency, csv_path, **kwargs)
        with subprocess.Popen(
            cmd, env=tool.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            started = time.monotonic()
            deadline, split = started + timeout_s, None
            while True:
                try:
                    output, _ = proc.communicate(timeout=POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    if probe is not None and time.monotonic() - started >= PROBE_AFTER_S:
                        split, probe = probe(), None
                    ended = alive() if alive is not None else None
                    if ended is None and time.monotonic() < deadline:
                        continue
                    proc.kill()
                    proc.communicate()
                    if ended is not None:
                        raise ServerGone(f"the server at {url} {ended} during the run") from None
                    raise subprocess.TimeoutExpired(cmd, timeout_s) from None
        if proc.returncode != 0 or not csv_path.is_file():
            tail = output.strip().splitlines()[-3:]
            raise RuntimeError(f"perf_analyzer failed (exit {proc.returncode}): {' | '.join(tail)}")
        sample: dict[str, Any] = parse_csv(csv_path)
        return sample | ({"connections": split} if split else {})


def connection_split(metrics_url: str, protocol: str) -> Callable[[], str | None]:
    """``run_once``'s ``probe`` for a gateway: its workers' open ``protocol`` connections
    (``kiln_open_connections``, one series a worker), most first ("6/5"); None when the page cannot
    be read. Workers hand connections to the one holding fewest (serving/handoff.py); this shows the
    split a run got."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    def read() -> str | None:
        try:
            with urllib.request.urlopen(metrics_url, timeout=2) as answer:
                text = answer.read().decode()
        except OSError:
            return None
        counts = [
            int(sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "kiln_open_connections" and sample.labels.get("protocol") == protocol
        ]
        return "/".join(str(n) for n in sorted(counts, reverse=True)) if counts else None

    return read


def process_watch(process: subprocess.Popen | None) -> Callable[[], str | None]:
    """``run_once``'s ``alive`` for a server running as ``process``: how it ended, once it has."""

    def ended() -> str | None:
        code = None if process is None else process.poll()
        if process is not None and code is None:
            return None
        return "is not running" if code is None else f"ended ({describe_exit(code)})"

    return ended


def describe_exit(code: int) -> str:
    """A Popen return code as words: a signal's name, or the exit status."""
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"signal {-code}, {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"


def tree_memory_mib(pid: int | None) -> dict[str, float] | None:
    """Proportional memory (``Pss``: a page shared by n processes counts 1/n to each) summed over
    process ``pid`` and every process under it, in MiB, and how many they are; None where procfs has
    none of it (not Linux, or the process is gone). Resident sizes summed would count a model's pages
    once for every worker that maps them. As the gateway's own ``kiln_process_memory_bytes`` reads it
    (:mod:`serving.process_tree`), for Triton's processes too."""
    use = process_tree.usage(pid)
    if use is None:
        return None
    return {"pss_mib": round(use.pss_bytes / 2**20, 1), "processes": use.processes}


def interleaved(
    tool: PerfAnalyzer,
    targets: dict[str, str],
    model: str,
    concurrencies: Sequence[int],
    *,
    rounds: int = 3,
    progress: Callable[[str], None] = log.info,
    only: Mapping[str, Collection[int]] | None = None,
    failures: dict[str, str] | None = None,
    alive: Mapping[str, Callable[[], str | None]] | None = None,
    probes: Mapping[str, Callable[[], str | None]] | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Every (target, concurrency) ``rounds`` times, interleaved; one row of medians per pair (its
    ``protocol`` that of ``kwargs``, gRPC unless given, ``grpc-stream`` with ``streaming``). A target
    named in ``only`` runs at those of the concurrencies only (an extra layout where the targets read
    it, to keep the bench short). ``failures``, where given, gets each target's last failure; a target
    whose run hung past its timeout, or whose server ended (``alive``: each target's
    :func:`process_watch`), is not run again. ``probes`` read a target's connection split during each
    of its runs (:func:`connection_split`)."""
    protocol = STREAM if kwargs.get("streaming") else kwargs.get("protocol", "grpc")
    samples: dict[tuple[str, int], list[dict[str, float]]] = {}
    hung: set[str] = set()
    for r in range(rounds):
        for c in concurrencies:
            for name, url in targets.items():
                if (only and name in only and c not in only[name]) or name in hung:
                    continue
                watch: dict[str, Any] = {"alive": alive[name]} if alive and name in alive else {}
                if probes and name in probes:
                    watch["probe"] = probes[name]
                try:
                    sample = run_once(tool, url, model, c, **watch, **kwargs)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    progress(f"perf_analyzer {protocol} {name} c={c} round {r + 1}: {exc}")
                    if failures is not None:
                        failures[name] = f"c={c} round {r + 1}: {exc}"
                    if isinstance(exc, subprocess.TimeoutExpired | ServerGone):
                        hung.add(name)
                    continue
                samples.setdefault((name, c), []).append(sample)
                progress(
                    f"perf_analyzer {protocol} {name} c={c}: {sample['throughput_rps']:.0f} infer/s, "
                    f"p50 {sample.get('p50_ms', 0):.2f} ms"
                )
    return [_median_row(name, c, runs, protocol) for (name, c), runs in samples.items()]


def _median_row(
    target: str, concurrency: int, runs: list[dict[str, Any]], protocol: str = "grpc"
) -> dict[str, Any]:
    keys = sorted({k for run in runs for k in run} - {"connections"})
    medians = {k: statistics.median(run[k] for run in runs if k in run) for k in keys}
    splits = [run["connections"] for run in runs if "connections" in run]
    return {
        "target": target,
        "tool": "perf_analyzer",
        "protocol": protocol,
        "concurrency": concurrency,
        "runs": len(runs),
        **medians,
        "samples_rps": [round(run["throughput_rps"], 1) for run in runs],
        **({"connections": ", ".join(splits)} if splits else {}),
    }


def side_by_side(
    repository: Path,
    model: str,
    workdir: Path,
    *,
    concurrencies: Sequence[int],
    threads: int,
    rounds: int = 3,
    workers: int = 1,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """The gateway and Triton (python flavour of the same repository) both up, perf_analyzer over gRPC,
    then over HTTP (KServe v2 REST, binary tensors as perf_analyzer sends them), then over gRPC streams
    at the targets' concurrencies, interleaved between them, and the open loop over gRPC; ``{"rows": [...], "open": [...]}`` (each row with its
    ``protocol``) or ``{"skipped": why}``. Over gRPC at the targets' concurrencies Triton also runs at
    its other layouts (:mod:`bench.triton_layouts`), interleaved with the rest; one that fails to start
    is named in ``layout_failures`` and the others stand in for it."""
    from contextlib import ExitStack

    from bench.servers import gateway_cmd
    from kiln.processes import running
    from serving.triton import find_triton
    from serving.triton.server import free_port

    tool = find_perf_analyzer()
    if tool is None:
        progress(f"perf_analyzer is not installed: {INSTALL_HINT}; using Kiln's own load generator only")
        return {"skipped": f"perf_analyzer not installed; {INSTALL_HINT}"}
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        http, grpc = free_port(), free_port()
        cmd = gateway_cmd(repository, http, grpc, threads, workers=workers)
        ready = f"http://127.0.0.1:{http}/v2/health/ready"
        gateway = stack.enter_context(running(cmd, ready, log_path=workdir / "gateway-pa.log"))
        targets = {"gateway": f"127.0.0.1:{grpc}"}
        alive = {"gateway": process_watch(gateway)}  # a run whose server ended stops there
        metrics_url = f"http://127.0.0.1:{http}/metrics"
        # how the gateway's workers held each run's connections (the HTTP reading counts itself)
        probes = {kind: {"gateway": connection_split(metrics_url, kind)} for kind in ("grpc", "http")}
        pids = {"gateway": gateway.pid}
        rest = {"gateway": f"127.0.0.1:{http}"}
        layouts: list[TritonLayout] = []
        failed: dict[str, str] = {}
        extra = stack.enter_context(ExitStack())  # the extra layouts, stopped after the gRPC runs
        if find_triton() is not None:
            layouts = triton_layouts(threads)
            tritons, failed = start_layouts(stack, extra, repository, workdir, layouts, progress)
            targets |= {name: server.grpc_url for name, server in tritons.items()}
            alive |= {name: process_watch(server.process) for name, server in tritons.items()}
            first = tritons[layouts[0].name].process  # the extra layouts are stopped before the end
            pids[layouts[0].name] = first.pid if first is not None else None
            rest[layouts[0].name] = tritons[layouts[0].name].http_url
        else:
            progress("perf_analyzer: Triton (nvidia-pytriton) is not installed; measuring the gateway alone")
        progress(
            f"perf_analyzer over gRPC, then HTTP, {rounds} interleaved rounds: {sorted(targets)} at "
            f"{list(concurrencies)}"
        )
        extras = {layout.name: TARGET_CONCURRENCIES for layout in layouts[1:]}
        common = {"rounds": rounds, "progress": progress, "alive": alive}
        rows = interleaved(tool, targets, model, concurrencies, only=extras, probes=probes["grpc"], **common)
        extra.close()
        over_http = interleaved(
            tool, rest, model, concurrencies, protocol="http", probes=probes["http"], **common
        )
        opened = {name: targets[name] for name in rest}  # over gRPC, the layouts HTTP measures too
        open_rows = open_loop_at_half_peak(
            tool, opened, model, rows, rounds=rounds, progress=progress, alive=alive, probes=probes["grpc"]
        )
        # what each server holds once it has served, before the streams, which Triton may not survive
        memory = {name: tree_memory_mib(pid) for name, pid in pids.items()}
        # the same servers through gRPC streams (perf_analyzer --streaming), last: Triton 2.51's python
        # backend crashed (signal 11) in one such run at c=64, which must not cost the targets' rows
        stream_failures: dict[str, str] = {}
        streamed = interleaved(
            tool,
            opened,
            model,
            TARGET_CONCURRENCIES,
            failures=stream_failures,
            probes=probes["grpc"],
            streaming=True,
            timeout_s=STREAM_TIMEOUT_S,
            **common,
        )
        return {
            "binary": str(tool.binary),
            "memory": {name: used for name, used in memory.items() if used is not None},
            "rows": rows + over_http + streamed,
            "open": open_rows,
            "stream_failures": stream_failures,
            "triton_layouts": {layout.name: layout.describe() for layout in layouts},
            "layout_failures": failed,
        }


def open_loop_at_half_peak(
    tool: PerfAnalyzer,
    targets: dict[str, str],
    model: str,
    rows: list[dict[str, Any]],
    *,
    rounds: int = 3,
    progress: Callable[[str], None] = log.info,
    alive: Mapping[str, Callable[[], str | None]] | None = None,
    probes: Mapping[str, Callable[[], str | None]] | None = None,
) -> list[dict[str, Any]]:
    """Each target at a fixed arrival rate of half its closed-loop peak (perf_analyzer's request-rate
    mode: a C++ client, so the client's own CPU does not bend the tail on a small machine), ``rounds``
    runs interleaved between the targets; one row of medians per target. ``delivered``: the
    throughput over the offered rate (below ~0.95 the server, or the client, did not keep up, and the
    percentiles are those of a growing queue); ``p99_over_p50``: the median of the runs' ratios.
    ``probes`` read a target's connection split during each run (``connections``): perf_analyzer
    sends the whole open loop over one gRPC connection, so one gateway worker takes all of it."""
    rates = {}
    for name in targets:
        peak = max((r["throughput_rps"] for r in rows if r["target"] == name), default=0.0)
        if peak > 0:
            rates[name] = round(peak / 2)
    samples: dict[str, list[dict[str, float]]] = {}
    for r in range(rounds):
        for name, rate in rates.items():
            try:
                watch = {"alive": (alive or {}).get(name), "probe": (probes or {}).get(name)}
                sample = run_once(tool, targets[name], model, 0, rate=rate, window_ms=3000, **watch)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                progress(f"perf_analyzer open loop {name} at {rate}/s round {r + 1}: {exc}")
                continue
            p50, p99 = sample.get("p50_ms", math.nan), sample.get("p99_ms", math.nan)
            sample["p99_over_p50"] = p99 / p50 if p50 else math.nan
            samples.setdefault(name, []).append(sample)
            progress(
                f"perf_analyzer open loop {name} at {rate}/s: {sample['throughput_rps']:.0f} infer/s, "
                f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
            )
    return [_open_row(name, rates[name], runs) for name, runs in samples.items()]


def _open_row(target: str, rate: float, runs: list[dict[str, float]]) -> dict[str, Any]:
    """One target's open-loop runs: medians of all of them, each run's ``delivered`` share and
    ``p99_over_p50``, and the median ratio of only the runs that kept up (``kept_runs``; NaN when none
    did): a run that fell behind measured a growing queue, not the tail at the offered rate."""
    row = _median_row(target, 0, runs)
    del row["concurrency"]
    delivered = [run["throughput_rps"] / rate for run in runs]
    kept = [run["p99_over_p50"] for run, share in zip(runs, delivered, strict=True) if share >= MIN_DELIVERED]
    row["rate_rps"] = rate
    row["delivered"] = row["throughput_rps"] / rate
    row["delivered_runs"] = [round(share, 2) for share in delivered]
    row["p99_over_p50_runs"] = [round(run["p99_over_p50"], 2) for run in runs]
    row["kept_runs"] = len(kept)
    row["left_out_delivered"] = [round(share, 3) for share in delivered if share < MIN_DELIVERED]
    row["p99_over_p50"] = statistics.median(kept) if kept else math.nan
    return row


def open_loop_target(row: dict[str, Any] | None) -> tuple[float, str]:
    """The p99/p50 target's value from a gateway open-loop row (perf_analyzer's, or Kiln's own single
    run), and a note naming the runs left out because they delivered under ``MIN_DELIVERED`` of the
    offered rate (NaN when none is left)."""
    if row is None:
        return math.nan, ""
    if "kept_runs" in row:  # perf_analyzer's runs, judged by _open_row
        kept, dropped = row["kept_runs"], row["left_out_delivered"]
    elif row.get("rate_rps") and "throughput_rps" in row:  # Kiln's own single run
        share = row["throughput_rps"] / row["rate_rps"]
        kept, dropped = int(share >= MIN_DELIVERED), [round(share, 3)] if share < MIN_DELIVERED else []
    else:  # a row from before rates were recorded, taken as it is
        kept, dropped = 1, []
    if not kept:
        return (
            math.nan,
            f"no open-loop run delivered {MIN_DELIVERED} of its offered rate (delivered {dropped})",
        )
    value = row.get("p99_over_p50", ratio(row["p99_ms"], row["p50_ms"]))
    note = f"{len(dropped)} of {kept + len(dropped)} runs left out: delivered {dropped}" if dropped else ""
    return value, note
