"""Triton measured at more than one layout, and the gateway compared with the better one.

The project's rule: compare against a peer's best layout, never a handicapped one. ONNX Runtime called
directly on 2 cores is faster as 2 single-thread sessions than as 1 two-thread session, so Triton runs
both as the export lays it out (1 instance x all threads) and as one single-thread instance per thread
(the gateway workers' layout); the targets divide by whichever measured more at each concurrency.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import ratio

log = logging.getLogger(__name__)

TRITON = "triton"  # the export's layout keeps the name older results and reports use
TARGET_CONCURRENCIES = (1, 64)  # the gRPC concurrencies the targets against Triton read
KEEP_REPOSITORY_ENV = "KILN_BENCH_KEEP_TRITON_REPOSITORY"


def keep_triton_repository() -> bool:
    """Whether the bench's Triton runs keep the python flavour they served beside their log after a
    clean run (``KILN_BENCH_KEEP_TRITON_REPOSITORY=1``); by default only a failed run keeps it, to be
    read with its log: each run kept one per Triton (94-379 MB), and six runs filled 1.2 GB."""
    return os.environ.get(KEEP_REPOSITORY_ENV, "").strip() not in ("", "0")


@dataclass(frozen=True)
class TritonLayout:
    """Triton's python flavour laid over the cores: model instances, each with its ONNX Runtime threads."""

    name: str
    instances: int
    threads: int

    def describe(self) -> str:
        plural = lambda n, word: f"{n} {word}{'s' if n > 1 else ''}"  # noqa: E731
        return f"{plural(self.instances, 'instance')} x {plural(self.threads, 'thread')}"


def triton_layouts(threads: int) -> list[TritonLayout]:
    """1 instance x ``threads`` (the export's layout, first: it serves every run), and with 2+ threads
    ``threads`` instances x 1 thread (with 1 thread the two coincide: only the first is measured)."""
    layouts = [TritonLayout(TRITON, 1, threads)]
    if threads > 1:
        layouts.append(TritonLayout(f"triton ({threads} instances x 1 thread)", threads, 1))
    return layouts


def start_layouts(
    stack: ExitStack,
    extra: ExitStack,
    repository: Path,
    workdir: Path,
    layouts: list[TritonLayout],
    progress: Callable[[str], None] = log.info,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Start Triton at each layout: the first on ``stack`` (its failure stops the bench, as before),
    the others on ``extra`` (closed by the caller once their runs are done), whose failures are
    returned by name instead of raised, so the bench goes on with the layouts that started."""
    from serving.triton import TritonServer
    from serving.triton.server import TritonError

    started: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for i, layout in enumerate(layouts):
        server = TritonServer(
            repository,
            workdir / ("triton-pa" if i == 0 else f"triton-pa-{layout.instances}x{layout.threads}"),
            threads=layout.threads,
            instances=layout.instances,
            keep_repository=keep_triton_repository(),
        )
        if i == 0:
            started[layout.name] = stack.enter_context(server)
            continue
        try:
            started[layout.name] = extra.enter_context(server)
        except (TritonError, OSError, ValueError) as error:
            failed[layout.name] = str(error).splitlines()[0] if str(error) else type(error).__name__
            progress(f"perf_analyzer: Triton at {layout.describe()} did not start: {failed[layout.name]}")
    return started, failed


def is_triton(target: str) -> bool:
    """True for Triton's rows at any layout (``triton`` or ``triton (<layout>)``)."""
    return target == TRITON or target.startswith(f"{TRITON} (")


def best_triton(rows: Iterable[dict[str, Any]], concurrency: int, protocol: str = "grpc") -> dict | None:
    """Triton's row with the highest throughput at ``concurrency`` over ``protocol``, whatever its
    layout (rows without a protocol, from older runs, are gRPC); None when Triton has none."""
    candidates = [
        r
        for r in rows
        if is_triton(r["target"])
        and r["concurrency"] == concurrency
        and r.get("protocol", "grpc") == protocol
    ]
    return max(candidates, key=lambda r: r["throughput_rps"], default=None)


def versus_best_triton(pa: dict[str, Any], concurrency: int) -> tuple[float, str]:
    """The gateway's gRPC throughput over the better Triton layout's at ``concurrency``, and a note
    naming that layout, the others' figures and any layout that failed (then the rest stand in)."""
    rows = [r for r in pa.get("rows", []) if r.get("protocol", "grpc") == "grpc"]
    gateway = next((r for r in rows if r["target"] == "gateway" and r["concurrency"] == concurrency), None)
    best = best_triton(rows, concurrency)
    if gateway is None or best is None:
        return math.nan, ""
    described = pa.get("triton_layouts", {})
    label = lambda name: f"{name} [{described[name]}]" if name in described else name  # noqa: E731
    others = [
        f"{label(r['target'])} {r['throughput_rps']:.0f}/s"
        for r in rows
        if is_triton(r["target"]) and r["concurrency"] == concurrency and r is not best
    ]
    note = f"against the better Triton layout, {label(best['target'])} at {best['throughput_rps']:.0f}/s"
    note += f" (also measured: {', '.join(others)})" if others else ""
    missing = {**pa.get("layout_failures", {})}
    missing.update(
        (name, "no run at this concurrency")
        for name in described
        if name not in missing
        and not any(r["target"] == name for r in rows if r["concurrency"] == concurrency)
    )
    if missing:
        note += "; not measured, left out: " + "; ".join(f"{label(n)}: {why}" for n, why in missing.items())
    return ratio(gateway["throughput_rps"], best["throughput_rps"]), note


def triton_targets(pa: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets "perf_analyzer gRPC c=N: gateway >= 1.0x Triton", each against the better layout."""
    targets = []
    for c in TARGET_CONCURRENCIES:
        measured, note = versus_best_triton(pa, c)
        targets.append(
            {"target": f"perf_analyzer gRPC c={c}: gateway >= 1.0x Triton", "goal": 1.0, "measured": measured}
            | ({"note": note} if note else {})
        )
    return targets
