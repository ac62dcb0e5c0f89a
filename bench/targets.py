"""The issue's targets table: each target with the value a bench run measured for it and whether it is met.

The classification targets are read off the run's engine, server and perf_analyzer rows here; the
translation targets come already made from :mod:`bench.translation` (:mod:`bench.translation_targets`).
"""

from __future__ import annotations

import math
from typing import Any

from bench import classify_identity, triton_layouts
from bench.perf_analyzer import open_loop_target
from bench.stats import ratio


def best_direct_throughput(rows: list[dict[str, Any]]) -> float:
    """ONNX Runtime fp32 called directly, at its best batch size and best layout (one session of every
    thread, or one single-thread session per thread called at once): the gateway's ceiling. Batches
    past the config's ``max_batch_size`` (rows marked ``servable: False``) are no ceiling of it."""
    ort = [
        r["throughput_ips"]
        for r in rows
        if str(r.get("engine", "")).split(" x")[0] == "onnxruntime"
        and r.get("precision") == "fp32"
        and r.get("servable", True)
        and "throughput_ips" in r  # an engine that failed has its error instead
    ]
    return max(ort, default=math.nan)


def targets(results: dict[str, Any], classifier: str) -> list[dict[str, Any]]:
    """Each target of the issue with where it stands in this run."""
    rows = classify_targets(results, classifier)
    stopped = set(results.get("interrupted", {}).get("not_measured", ()))
    for row, parts in zip(rows, CLASSIFY_PARTS, strict=True):
        left_out = [part for part in parts if part not in results]
        if left_out and not row.get("note") and math.isnan(row["measured"]):
            failed = [part for part in left_out if part in results.get("failed", {})]  # ran, and failed
            cut = [part for part in left_out if part in stopped and part not in failed]  # stopped before them
            only = [part for part in left_out if part not in stopped and part not in failed]
            row["note"] = "not measured: " + "; ".join(
                ([f"{' and '.join(failed)} failed (see Parts that failed)"] if failed else [])
                + ([f"the run was interrupted before {' and '.join(cut)} finished"] if cut else [])
                + ([f"this run left out {' and '.join(only)} (--only)"] if only else [])
            )
    rows += results.get("translation", {}).get("targets", [])
    for r in rows:
        r["met"] = _met(r)
    return rows


# The parts (``--only``) each classification target of :func:`classify_targets` reads, in its order.
CLASSIFY_PARTS = (
    ("engines",),
    ("servers", "engines"),
    ("servers",),
    ("servers",),  # perf_analyzer gRPC c=1 and c=64 (triton_layouts.triton_targets)
    ("servers",),
    ("servers", "engines"),
    ("servers",),
    ("servers",),
)


def _met(row: dict[str, Any]) -> str:
    """Whether the row meets its goal (at most the goal where lower is better): "yes", "no", or "–"
    where nothing was measured."""
    m = row["measured"]
    return (
        "–"
        if math.isnan(m)
        else ("yes" if (m <= row["goal"] if row.get("lower_is_better") else m >= row["goal"]) else "no")
    )


def classify_targets(results: dict[str, Any], classifier: str) -> list[dict[str, Any]]:
    """The classification targets, measured (NaN where this run has no figure for one)."""
    eng = [r for r in results.get("engines", []) if "error" not in r]
    p50 = {(r["engine"], r["precision"], r["batch"]): r["p50_ms"] for r in eng}
    servers = results.get("servers", {})
    own_http64 = _own_http_c64(servers)
    open_value, open_note = _open_loop(servers)
    return [
        {
            "target": f"ORT fp32 >= 2x PyTorch eager at batch 1 ({classifier})",
            "goal": 2.0,
            "measured": ratio(
                p50.get(("pytorch", "fp32", 1), math.nan), p50.get(("onnxruntime", "fp32", 1), math.nan)
            ),
        },
        {
            "target": "gateway c=64 (best client) >= 0.8x ORT best-batch direct",
            "goal": 0.8,
            "measured": ratio(_gateway_best_c64(servers), best_direct_throughput(eng)),
        },
        {
            "target": "gateway c=64 >= 5x naive baseline (both over Kiln's HTTP client)",
            "goal": 5.0,
            "measured": ratio(own_http64.get("gateway", math.nan), own_http64.get("naive", math.nan)),
        },
        *triton_layouts.triton_targets(servers.get("perf_analyzer", {})),
        {
            "target": "perf_analyzer c=1 gateway p50 - ORT batch-1 p50 <= 1 ms",
            "goal": 1.0,
            "lower_is_better": True,
            "measured": _pa_grpc(servers, "gateway", 1, "p50_ms")
            - p50.get(("onnxruntime", "fp32", 1), math.nan),
        },
        {
            "target": "p99 <= 2x p50 at half of peak (gateway, open loop)",
            "goal": 2.0,
            "measured": open_value,
            "note": open_note,
            "lower_is_better": True,
        },
        {
            "target": "classify answers through the gateway identical to ONNX Runtime direct (%)",
            "goal": 100.0,
            "measured": classify_identity.identical_percent(servers.get("identity", {})),
        },
    ]


def _gateway_best_c64(servers: dict[str, Any]) -> float:
    """The gateway's best c=64 figure, whichever client measured it: Kiln's Python generator (HTTP, gRPC)
    or perf_analyzer (C++, lighter on the 2 cores the gateway shares with it); ORT direct has no client."""
    return max(
        (
            r["throughput_rps"]
            for r in (*servers.get("closed", []), *servers.get("perf_analyzer", {}).get("rows", []))
            if r["target"] == "gateway" and r["concurrency"] == 64
        ),
        default=math.nan,
    )


def _own_http_c64(servers: dict[str, Any]) -> dict[str, float]:
    """Each target's c=64 throughput over Kiln's own HTTP client: the naive baseline is measured with it
    only, so the gateway's side of that ratio is the same client's HTTP row, never a lighter client's
    (perf_analyzer)."""
    return {
        r["target"]: r["throughput_rps"]
        for r in servers.get("closed", [])
        if r["concurrency"] == 64 and r.get("protocol", "http") == "http"
    }


def _open_loop(servers: dict[str, Any]) -> tuple[float, str]:
    """The open-loop target's value and note: perf_analyzer's C++ client when there is one, else Kiln's
    own open loop."""
    pa_open = [r for r in servers.get("perf_analyzer", {}).get("open", []) if r["target"] == "gateway"]
    opened = pa_open or servers.get("open", [])
    return open_loop_target(opened[0] if opened else None)


def _pa_grpc(servers: dict[str, Any], target: str, concurrency: int, key: str) -> float:
    """``key`` of ``target``'s perf_analyzer row over gRPC at ``concurrency`` (rows without a protocol:
    older runs, over gRPC); NaN where there is none. The targets against Triton read these rows."""
    rows = {
        (r["target"], r["concurrency"]): r
        for r in servers.get("perf_analyzer", {}).get("rows", [])
        if r.get("protocol", "grpc") == "grpc"
    }
    return rows.get((target, concurrency), {}).get(key, math.nan)
