"""A measured batching recommendation per exported entry, written to kiln.json and the export summary.

Triton's batcher guide: start with dynamic batching and no queue delay; add preferred sizes or a delay
only where a measurement shows a gain. Export measures what a merged batch saves per item on this
machine (batch 1 vs ``max_batch_size``, ONNX Runtime as the gateway runs it) and says what to write:
the config keeps Triton's defaults (no preferred sizes, no delay) unless the caller measured otherwise.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from export.specs import GraphSpec

Run = Callable[[dict[str, np.ndarray]], Any]
WORTH_MERGING = 1.2  # a merged batch must be this much cheaper per item for batching to matter


def _per_item_s(run: Run, feeds: dict[str, np.ndarray], items: int, budget_s: float) -> float:
    """Median seconds per item of ``run(feeds)`` within ``budget_s`` (after one warm-up call)."""
    run(feeds)
    times, stop = [], time.perf_counter() + budget_s
    while not times or (time.perf_counter() < stop and len(times) < 50):
        started = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - started)
    return statistics.median(times) / items


def example_feeds(spec: GraphSpec, batch: int) -> dict[str, np.ndarray]:
    """Zero inputs of ``batch`` items (dynamic non-batch axes as 1)."""
    return {
        t.name: np.zeros([batch, *(d if d > 0 else 1 for d in t.dims[1:])], dtype=t.dtype)
        for t in spec.inputs
    }


def measure(
    run: Run,
    spec: GraphSpec,
    budget_s: float = 0.5,
    *,
    preferred: tuple[int, ...] = (),
    delay_us: int = 0,
) -> dict[str, Any]:
    """Per-item time at batch 1 and at ``max_batch_size``, and the batching settings the entry's config
    carries (``preferred``, ``delay_us``: a GPU config's buckets and delay), so kiln.json and the export
    summary never state settings other than those written."""
    largest = spec.max_batch_size
    one = _per_item_s(run, example_feeds(spec, 1), 1, budget_s)
    many = _per_item_s(run, example_feeds(spec, largest), largest, budget_s)
    gain = one / many if many > 0 else float("nan")
    return {
        "batch1_ms": round(one * 1e3, 4),
        f"batch{largest}_ms_per_item": round(many * 1e3, 4),
        "merge_gain": round(gain, 2),
        "preferred_batch_size": list(preferred),
        "max_queue_delay_microseconds": delay_us,
        "recommendation": recommendation(gain, largest, preferred, delay_us),
    }


def recommendation(gain: float, largest: int, preferred: tuple[int, ...] = (), delay_us: int = 0) -> str:
    """One sentence for the export summary, about the settings written (Triton's defaults unless the
    config sets preferred sizes or a delay for another reason: a GPU config's shape-stable buckets)."""
    if preferred or delay_us:
        return (
            f"merging is {gain:.1f}x cheaper per item at batch {largest} on this machine's CPU; the config "
            f"keeps preferred sizes {list(preferred)} and a {delay_us} us queue delay, set for its GPU "
            "buckets (one shape per session), not by this measurement"
        )
    if gain >= WORTH_MERGING:
        return (
            f"dynamic batching pays ({gain:.1f}x cheaper per item at batch {largest}): keep it, with no "
            "preferred sizes and no queue delay; requests merge while an instance is busy"
        )
    return (
        f"merging saves little here ({gain:.1f}x at batch {largest}): dynamic batching with no delay costs "
        "nothing, and a queue delay would only add latency"
    )
