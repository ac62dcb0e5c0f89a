"""Triton's own load tool, perf_analyzer, driving the gateway and Triton side by side (as users will).

The binary, its command line and its CSV are :mod:`bench.perf_analyzer_tool`; what a run watches on
its server (whether it still runs, its connection split, its memory) is :mod:`bench.server_watch`.
Where the binary is missing the bench says so and keeps its own load generator.

Runs are interleaved (each round visits every server at every concurrency) and summarized by medians,
because the machine is shared and noisy.
"""

from __future__ import annotations

import logging
import math
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.perf_analyzer_tool import INSTALL_HINT, PerfAnalyzer, command, find_perf_analyzer, parse_csv
from bench.server_watch import connection_split, process_watch, tree_memory_mib
from bench.stats import ratio
from bench.triton_layouts import TARGET_CONCURRENCIES, TritonLayout, start_layouts, triton_layouts

log = logging.getLogger(__name__)

STREAM = "grpc-stream"  # the protocol of rows measured with --streaming (gRPC ModelStreamInfer)
STREAM_TIMEOUT_S = 90.0  # a streaming run takes ~10 s; past this its server has stopped answering
MIN_DELIVERED = 0.95  # an open-loop run counts when it delivered this share of its offered rate


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
    connections (:func:`bench.server_watch.connection_split`); its answer is the sample's ``connections``."""
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
    :func:`bench.server_watch.process_watch`), is not run again. ``probes`` read a target's connection split during each
    of its runs (:func:`bench.server_watch.connection_split`)."""
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


@dataclass
class _Servers:
    """The servers one side-by-side run measures, by target name: the gateway, then Triton's layouts."""

    grpc: dict[str, str]  # gRPC addresses: every server
    http: dict[str, str]  # HTTP addresses: the gateway and Triton's first layout
    alive: dict[str, Callable[[], str | None]]  # a run whose server ended stops there
    probes: dict[str, dict[str, Callable[[], str | None]]]  # by protocol: the gateway's connection split
    pids: dict[str, int | None]  # whose memory is read once they have served
    layouts: list[TritonLayout] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # the layouts that did not start


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
    tool = find_perf_analyzer()
    if tool is None:
        progress(f"perf_analyzer is not installed: {INSTALL_HINT}; using Kiln's own load generator only")
        return {"skipped": f"perf_analyzer not installed; {INSTALL_HINT}"}
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        servers = _start_gateway(stack, repository, workdir, threads, workers)
        extra = stack.enter_context(ExitStack())  # the extra layouts, stopped after the gRPC runs
        _start_tritons(servers, stack, extra, repository, workdir, threads, progress)
        progress(
            f"perf_analyzer over gRPC, then HTTP, {rounds} interleaved rounds: {sorted(servers.grpc)} at "
            f"{list(concurrencies)}"
        )
        return _measure(tool, servers, extra, model, concurrencies, rounds, progress)


def _start_gateway(stack: ExitStack, repository: Path, workdir: Path, threads: int, workers: int) -> _Servers:
    """The gateway, up until ``stack`` closes, and how each run reaches and watches it."""
    from bench.servers import gateway_cmd
    from kiln.processes import running
    from serving.triton.ports import free_port

    http, grpc = free_port(), free_port()
    cmd = gateway_cmd(repository, http, grpc, threads, workers=workers)
    ready = f"http://127.0.0.1:{http}/v2/health/ready"
    gateway = stack.enter_context(running(cmd, ready, log_path=workdir / "gateway-pa.log"))
    metrics_url = f"http://127.0.0.1:{http}/metrics"
    return _Servers(
        grpc={"gateway": f"127.0.0.1:{grpc}"},
        http={"gateway": f"127.0.0.1:{http}"},
        alive={"gateway": process_watch(gateway)},
        # how the gateway's workers held each run's connections (the HTTP reading counts itself)
        probes={kind: {"gateway": connection_split(metrics_url, kind)} for kind in ("grpc", "http")},
        pids={"gateway": gateway.pid},
    )


def _start_tritons(
    servers: _Servers,
    stack: ExitStack,
    extra: ExitStack,
    repository: Path,
    workdir: Path,
    threads: int,
    progress: Callable[[str], None],
) -> None:
    """Triton at its layouts beside the gateway, where it is installed, added to ``servers``: the first
    layout up until ``stack`` closes, the others until ``extra`` does."""
    from serving.triton import find_triton

    if find_triton() is None:
        progress("perf_analyzer: Triton (nvidia-pytriton) is not installed; measuring the gateway alone")
        return
    layouts = triton_layouts(threads)
    tritons, failed = start_layouts(stack, extra, repository, workdir, layouts, progress)
    servers.layouts, servers.failed = layouts, failed
    servers.grpc |= {name: server.grpc_url for name, server in tritons.items()}
    servers.alive |= {name: process_watch(server.process) for name, server in tritons.items()}
    first = tritons[layouts[0].name].process  # the extra layouts are stopped before the end
    servers.pids[layouts[0].name] = first.pid if first is not None else None
    servers.http[layouts[0].name] = tritons[layouts[0].name].http_url


def _measure(
    tool: PerfAnalyzer,
    servers: _Servers,
    extra: ExitStack,
    model: str,
    concurrencies: Sequence[int],
    rounds: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """gRPC (the extra layouts at the targets' concurrencies only, then stopped), HTTP, the open loop,
    each server's memory, then gRPC streams: :func:`side_by_side`'s result."""
    extras = {layout.name: TARGET_CONCURRENCIES for layout in servers.layouts[1:]}
    common = {"rounds": rounds, "progress": progress, "alive": servers.alive}
    probes = servers.probes["grpc"]
    rows = interleaved(tool, servers.grpc, model, concurrencies, only=extras, probes=probes, **common)
    extra.close()
    over_http = interleaved(
        tool, servers.http, model, concurrencies, protocol="http", probes=servers.probes["http"], **common
    )
    opened = {name: servers.grpc[name] for name in servers.http}  # over gRPC, the layouts HTTP measures too
    open_rows = open_loop_at_half_peak(
        tool, opened, model, rows, rounds=rounds, progress=progress, alive=servers.alive, probes=probes
    )
    # what each server holds once it has served, before the streams, which Triton may not survive
    memory = {name: tree_memory_mib(pid) for name, pid in servers.pids.items()}
    # the same servers through gRPC streams (perf_analyzer --streaming), last: Triton 2.51's python
    # backend crashed (signal 11) in one such run at c=64, which must not cost the targets' rows
    stream_failures: dict[str, str] = {}
    streamed = interleaved(
        tool,
        opened,
        model,
        TARGET_CONCURRENCIES,
        failures=stream_failures,
        probes=probes,
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
        "triton_layouts": {layout.name: layout.describe() for layout in servers.layouts},
        "layout_failures": servers.failed,
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
        if peak > 0:  # exactly half: rounded to whole requests/s, a slow server's half read 0 or 40 %
            rates[name] = peak / 2
    samples: dict[str, list[dict[str, float]]] = {}
    for r in range(rounds):
        for name, rate in rates.items():
            try:
                watch = {"alive": (alive or {}).get(name), "probe": (probes or {}).get(name)}
                sample = run_once(tool, targets[name], model, 0, rate=rate, window_ms=3000, **watch)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                progress(f"perf_analyzer open loop {name} at {rate:g}/s round {r + 1}: {exc}")
                continue
            p50, p99 = sample.get("p50_ms", math.nan), sample.get("p99_ms", math.nan)
            sample["p99_over_p50"] = p99 / p50 if p50 else math.nan
            samples.setdefault(name, []).append(sample)
            progress(
                f"perf_analyzer open loop {name} at {rate:g}/s: {sample['throughput_rps']:.0f} infer/s, "
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
