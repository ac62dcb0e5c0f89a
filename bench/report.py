"""Write a benchmark run: results.json, report.md (tables with ratios against each peer) and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.stats import ratio
from bench.triton_layouts import best_triton


def write_results(results: dict[str, Any], out: Path) -> Path:
    """results.json, standard JSON: a value not measured (NaN) or infinite is ``null``, where Python's
    ``NaN`` literal made the file unreadable to ``JSON.parse`` and other strict readers."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    text = json.dumps(_finite(results), indent=2, default=_json_default, allow_nan=False)
    path.write_text(text, encoding="utf-8")
    return path


def _finite(value: Any) -> Any:
    """``value`` with every float that is NaN or infinite, at any depth, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return _finite(value.item())
    return str(value)


def _fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def measured_text(measured: float, goal: float, most: int = 6) -> str:
    """``measured`` with two decimals, or as many more as it takes not to print the goal's figure when
    it differs from the goal: the verdict reads the unrounded value, so "2.00 | 2.00 | no" (2.003
    measured) would contradict itself."""
    if math.isnan(measured):
        return "–"
    for digits in range(2, most + 1):
        if measured == goal or f"{measured:.{digits}f}" != f"{goal:.{digits}f}":
            break
    return f"{measured:.{digits}f}"


def targets_table(rows: list[dict[str, Any]]) -> str:
    """The targets with their verdicts, each measured value printed apart from its goal (see
    :func:`measured_text`)."""
    shown = [
        {
            **r,
            "measured": measured_text(r["measured"], r["goal"])
            if isinstance(r["measured"], float)
            else r["measured"],
        }
        for r in rows
    ]
    notes = "".join(f"\n- {r['target']}: {r['note']}" for r in rows if r.get("note"))
    return table(shown, ["target", "goal", "measured", "met"]) + ("\n" + notes if notes else "")


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def engine_section(
    rows: list[dict[str, Any]],
    *,
    baseline: tuple[str, str | None] = ("pytorch", None),
    speedup: str = "speedup_vs_pytorch_p50",
    title: str = "Engines (classifier)",
    extra_columns: tuple[str, ...] = ("peak_rss_mib",),
) -> str:
    """The engines table, each row's p50 against the ``baseline`` (engine, precision or any) at its batch."""
    ok = [r for r in rows if "error" not in r]
    engine, precision = baseline
    base = {
        r["batch"]: r["p50_ms"] for r in ok if r["engine"] == engine and precision in (None, r["precision"])
    }
    for r in ok:
        r[speedup] = ratio(base.get(r["batch"], math.nan), r["p50_ms"])
    cols = [
        "engine",
        "precision",
        "batch",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "throughput_ips",
        *extra_columns,
        speedup,
    ]
    errors = "".join(f"\n- {r['engine']} {r['precision']}: {r['error']}" for r in rows if "error" in r)
    parallel = sorted({r["engine"] for r in ok if r.get("sessions", 1) > 1})
    note = (
        f"\n\n{', '.join(parallel)}: that many single-thread sessions called at once, each on its own "
        "batch of the size shown (the gateway workers' layout); throughput is theirs together, "
        "latency that of one call."
        if parallel
        else ""
    )
    return f"## {title}\n\n" + table(ok, cols) + note + (f"\n\nFailed:{errors}" if errors else "") + "\n"


OPEN_COLUMNS = [
    "target",
    "protocol",
    "rate_rps",
    "sent_rps",
    "throughput_rps",
    "p50_ms",
    "p99_ms",
    "p99_over_p50",
    "errors",
]


def server_section(servers: dict[str, Any], best_direct_ips: float) -> str:
    rows = servers.get("closed", [])
    naive = {(r["concurrency"]): r["throughput_rps"] for r in rows if r["target"] == "naive"}
    for r in rows:
        r["x_naive"] = ratio(r["throughput_rps"], naive.get(r["concurrency"], math.nan))
        r["x_ort_best_batch"] = ratio(r["throughput_rps"], best_direct_ips)
    cols = [
        "target",
        "protocol",
        "concurrency",
        "throughput_rps",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "max_ms",
        "errors",
        "x_naive",
        "x_ort_best_batch",
    ]
    text = "## Servers (classifier, one image per request, closed loop)\n\n" + table(rows, cols) + "\n"
    text += gateway_layout_line(servers)
    if servers.get("open"):
        for r in servers["open"]:
            r["p99_over_p50"] = ratio(r["p99_ms"], r["p50_ms"])
        text += "\n### Open loop at half of the gateway's peak throughput\n\n"
        text += table(servers["open"], OPEN_COLUMNS)
        text += (
            "\n\n`sent_rps`: the rate Kiln's client sent at (below `rate_rps`, it fell behind its schedule, "
            "and its lateness counts in the latencies: the client's queue, not the server's).\n"
        )
    if servers.get("errors"):
        text += "\n" + "\n".join(f"- {k}: {v}" for k, v in servers["errors"].items()) + "\n"
    return text + perf_analyzer_section(servers.get("perf_analyzer", {}))


def gateway_layout_line(servers: dict[str, Any]) -> str:
    """Which gateway layout each gateway target ran: `gateway` the bench's ``--gateway-workers``,
    `gateway->triton` one worker (bench.servers), so their rows are not read as alike."""
    workers = servers.get("gateway_workers")
    if not workers:  # results written before the bench recorded it
        return ""
    return (
        f"\n`gateway`: {workers} gateway worker{'s' if workers > 1 else ''} (`--workers`, the bench's "
        "`--gateway-workers`); `gateway->triton`: 1 gateway worker forwarding to Triton.\n"
    )


SERVER_SPLIT = (
    "\n`server_*_ms`: each server's own account of an average request (its statistics extension, as "
    "perf_analyzer reads it): time in the batcher's queue, then its batch's merge (`input`), run "
    "(`infer`) and split (`output`); what the client waited beyond them is the front end and the "
    "network.\n"
)

CONNECTIONS = (
    "\n`connections`: the gateway's open connections of the row's protocol in each of its workers, "
    "most first, read 1.5 s into each run (`kiln_open_connections`; a new connection goes to the "
    "worker holding fewest, serving/handoff.py); the HTTP rows count the connection that read them.\n"
)


PA_COLUMNS = [
    "target",
    "protocol",
    "concurrency",
    "runs",
    "throughput_rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "x_triton",
    "server_queue_ms",
    "server_input_ms",
    "server_infer_ms",
    "server_output_ms",
    "connections",
]

PA_OPEN_LOOP = (
    "\nOpen loop (perf_analyzer request-rate mode, asynchronous calls, constant intervals) at half "
    "of each server's closed-loop peak, interleaved runs, medians; `delivered` is the throughput "
    "over the offered rate (below ~0.95 the queue grew through the run), `delivered_runs` and "
    "`p99_over_p50_runs` each run's; `p99_over_p50` is the median ratio of the `kept_runs`, those "
    "that delivered at least 0.95; `connections` as above (perf_analyzer sends an open loop over "
    "one gRPC connection, so one gateway worker takes all of it):\n\n"
)

PA_OPEN_COLUMNS = [
    "target",
    "rate_rps",
    "runs",
    "throughput_rps",
    "delivered",
    "delivered_runs",
    "p50_ms",
    "p99_ms",
    "p99_over_p50_runs",
    "kept_runs",
    "p99_over_p50",
    "connections",
]


def perf_analyzer_section(pa: dict[str, Any]) -> str:
    """perf_analyzer (Triton's own tool) over gRPC, HTTP and gRPC streams: medians of interleaved runs,
    gateway vs Triton over the same protocol."""
    if not pa:
        return ""
    head = "\n### perf_analyzer over gRPC, HTTP and gRPC streams (interleaved runs, medians)\n\n"
    if "skipped" in pa:
        return head + f"Not run: {pa['skipped']}.\n"
    rows, triton = _against_triton(pa["rows"])
    text = head + table(rows, PA_COLUMNS) + "\n" + _layouts_note(pa, triton) + SERVER_SPLIT + CONNECTIONS
    text += _memory_note(pa.get("memory"))
    for name, failure in sorted(pa.get("stream_failures", {}).items()):
        text += f"\nStreaming runs of `{name}` failed (its rows hold the runs that finished): {failure}\n"
    if pa.get("open"):
        text += PA_OPEN_LOOP + table(pa["open"], PA_OPEN_COLUMNS) + "\n"
    return text


def _against_triton(
    pa_rows: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], dict[tuple[str, int], dict | None]]:
    """The rows by protocol, concurrency and target, each with its ``x_triton`` (its throughput over the
    best Triton row's at its protocol and concurrency), and those Triton rows."""
    for r in pa_rows:
        r.setdefault("protocol", "grpc")
    order = {"grpc": 0, "http": 1, "grpc-stream": 2}
    rows = sorted(pa_rows, key=lambda r: (order.get(r["protocol"], 2), r["concurrency"], r["target"]))
    triton = {
        (r["protocol"], r["concurrency"]): best_triton(rows, r["concurrency"], r["protocol"]) for r in rows
    }
    for r in rows:
        best = triton[(r["protocol"], r["concurrency"])]
        r["x_triton"] = ratio(r["throughput_rps"], best["throughput_rps"] if best else math.nan)
    return rows, triton


def _memory_note(memory: dict[str, Any] | None) -> str:
    """Each server's memory after the runs (empty where it was not read)."""
    if not memory:
        return ""
    held = ", ".join(
        f"`{name}` {used['pss_mib']:.0f} MiB ({used['processes']} processes)"
        for name, used in sorted(memory.items())
    )
    return (
        f"\nMemory after the runs, each server's processes together (proportional set size: pages "
        f"that processes share count once in all): {held}.\n"
    )


def _layouts_note(pa: dict[str, Any], best: dict[tuple[str, int], dict | None]) -> str:
    """Which Triton layouts ran, which one each ``x_triton`` divides by where several did, and those
    that failed (empty for a run with Triton at one layout)."""
    layouts = pa.get("triton_layouts", {})
    if len(layouts) < 2:
        return ""
    text = "\nTriton ran at " + "; ".join(f"`{name}`: {how}" for name, how in layouts.items())
    text += ". `x_triton` divides by the better layout at each protocol and concurrency: "
    text += ", ".join(
        f"{protocol} c={c} `{row['target']}`" for (protocol, c), row in sorted(best.items()) if row
    )
    failures = pa.get("layout_failures", {})
    text += "".join(f"; `{name}` not measured ({why})" for name, why in failures.items())
    return text + ".\n"


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    """Throughput vs concurrency, latency percentiles vs load, batch-size distribution."""
    import matplotlib

    matplotlib.use("Agg")
    written = []
    closed = results.get("servers", {}).get("closed", [])
    if closed:
        written.append(_servers_plot(closed, out / "servers.png"))
    hist = results.get("servers", {}).get("batch_histogram", {})
    if hist:
        written.append(_batch_sizes_plot(hist, out / "batch_sizes.png"))
    engines = [r for r in results.get("engines", []) if "error" not in r]
    if engines:
        written.append(_engines_plot(engines, out / "engines.png"))
    return written


def _servers_plot(closed: list[dict[str, Any]], path: Path) -> Path:
    """Each server and protocol's throughput, and its p50 and p99 latency, against the concurrency."""
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key in sorted({(r["target"], r["protocol"]) for r in closed}):
        rows = sorted(
            (r for r in closed if (r["target"], r["protocol"]) == key), key=lambda r: r["concurrency"]
        )
        xs = [r["concurrency"] for r in rows]
        ax_t.plot(xs, [r["throughput_rps"] for r in rows], marker="o", label=" ".join(key))
        ax_l.plot(xs, [r["p50_ms"] for r in rows], marker="o", label=f"{' '.join(key)} p50")
        ax_l.plot(xs, [r["p99_ms"] for r in rows], linestyle="--", label=f"{' '.join(key)} p99")
    for ax, ylabel in ((ax_t, "requests/s"), (ax_l, "latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_t.legend(fontsize=7)
    ax_l.legend(fontsize=6, ncol=2)
    ax_l.set_yscale("log")
    fig.tight_layout()
    return _save(fig, path)


def _batch_sizes_plot(hist: dict[str, float], path: Path) -> Path:
    """The gateway's batches per batch-size bucket, from the cumulative Prometheus buckets."""
    import matplotlib.pyplot as plt

    edges = sorted((float(k), v) for k, v in hist.items() if k != "+Inf")
    counts, prev = [], 0.0
    for _, cum in edges:
        counts.append(cum - prev)
        prev = cum
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([str(int(e)) for e, _ in edges], counts)
    ax.set_xlabel("batch size (bucket upper bound)")
    ax.set_ylabel("batches")
    ax.set_title("Gateway dynamic batching")
    fig.tight_layout()
    return _save(fig, path)


def _engines_plot(engines: list[dict[str, Any]], path: Path) -> Path:
    """Each engine and precision's images/s against the batch size."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in sorted({(r["engine"], r["precision"]) for r in engines}):
        rows = sorted((r for r in engines if (r["engine"], r["precision"]) == key), key=lambda r: r["batch"])
        ax.plot(
            [r["batch"] for r in rows],
            [r["throughput_ips"] for r in rows],
            marker="o",
            label=" ".join(key),
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images/s")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
