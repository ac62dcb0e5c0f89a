"""Timing helpers: repeated measurement with warmup, percentiles, and a time budget per measurement."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class LatencyStats:
    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(latencies_s: list[float] | np.ndarray) -> LatencyStats:
    """Percentiles of a list of latencies in seconds, reported in milliseconds."""
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    if ms.size == 0:
        nan = float("nan")
        return LatencyStats(0, nan, nan, nan, nan, nan)
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return LatencyStats(int(ms.size), float(p50), float(p90), float(p99), float(ms.max()), float(ms.mean()))


def time_calls(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    min_calls: int = 5,
    max_calls: int = 200,
    budget_s: float = 2.0,
) -> list[float]:
    """Call ``fn`` repeatedly (after warmup) until ``budget_s`` is spent or ``max_calls`` are made."""
    for _ in range(warmup):
        fn()
    latencies: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(latencies) < max_calls and (len(latencies) < min_calls or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        latencies.append(time.perf_counter() - start)
    return latencies


def ratio(numerator: float, denominator: float) -> float:
    """A safe ratio for reports (nan when the denominator is missing or zero)."""
    if not denominator or np.isnan(denominator) or np.isnan(numerator):
        return float("nan")
    return float(numerator / denominator)
