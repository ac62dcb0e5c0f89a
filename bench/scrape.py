"""What the bench reads off a gateway's ``/metrics`` page (Prometheus text): the batches a model ran
by size and the decoder's mean step (every ``--workers`` process counted: ``serving.metrics``)."""

from __future__ import annotations

import re
from typing import Any

_BUCKET = re.compile(r"^kiln_batch_size_(bucket|sum|count)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")


def batch_mix(metrics_text: str, model: str) -> dict[str, Any]:
    """``{"batches": {upper bound: count}, "items": n}``: the executed batches of ``model`` by size
    bucket (from the cumulative Prometheus histogram) and the items they held."""
    cumulative: dict[float, float] = {}
    items = 0.0
    for line in metrics_text.splitlines():
        m = _BUCKET.match(line)
        if not m or f'model="{model}"' not in m["labels"]:
            continue
        if m[1] == "sum":
            items += float(m["value"])
        elif m[1] == "bucket":
            le = float(re.search(r'le="([^"]+)"', m["labels"])[1])
            cumulative[le] = cumulative.get(le, 0.0) + float(m["value"])  # summed over worker processes
    batches, below = {}, 0.0
    for le in sorted(cumulative):
        if cumulative[le] > below and le != float("inf"):
            batches[int(le)] = cumulative[le] - below
        below = max(below, cumulative[le])
    return {"batches": batches, "items": items}


def mix_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What ran between two :func:`batch_mix` readings."""
    batches = {b: n - before["batches"].get(b, 0.0) for b, n in after["batches"].items()}
    return {"batches": {b: n for b, n in batches.items() if n > 0}, "items": after["items"] - before["items"]}


_HISTOGRAM = re.compile(r"^(?P<name>\w+)_(?P<part>sum|count)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")


def step_means(metrics_text: str, model: str, since: str = "") -> dict[str, float]:
    """The translator's mean decoder step (ms, the whole step: graph and beam bookkeeping) and rows in it;
    ``since``: an earlier scrape of the same page, so the means are those of the steps run between the
    two (a warm pass's first steps, which load lazily, are not the measured run's)."""
    names = ("kiln_decoder_step_seconds", "kiln_decoder_rows_per_step")
    means = histogram_means(metrics_text, model, names, since)
    return {
        "step_ms": 1e3 * means["kiln_decoder_step_seconds"],
        "rows_per_step": means["kiln_decoder_rows_per_step"],
    }


def histogram_means(
    metrics_text: str, model: str, names: tuple[str, ...], since: str = ""
) -> dict[str, float]:
    """The mean of each Prometheus histogram in ``names`` for ``model`` (summed over its series), over
    what was observed after the scrape ``since`` where one is given."""
    now, before = _sums(metrics_text, model, names), _sums(since, model, names)
    means = {}
    for name in names:
        total, count = (a - b for a, b in zip(now[name], before[name], strict=True))
        means[name] = total / count if count else float("nan")
    return means


def _sums(metrics_text: str, model: str, names: tuple[str, ...]) -> dict[str, list[float]]:
    """Each histogram's ``[sum, count]`` for ``model`` in a scrape (summed over its series)."""
    sums: dict[str, list[float]] = {name: [0.0, 0.0] for name in names}
    for line in metrics_text.splitlines():
        m = _HISTOGRAM.match(line)
        if m and m["name"] in sums and f'model="{model}"' in m["labels"]:
            sums[m["name"]][m["part"] == "count"] += float(m["value"])
    return sums
