"""A compiled decode call's steps are recorded at once (``observe_decode_step(..., steps=n)``): the same
series as ``n`` single steps, each histogram's bucket and sum updated once (observe_times)."""

from __future__ import annotations

import math
import re

import pytest
from prometheus_client import CollectorRegistry, Histogram

from serving.metrics import GatewayMetrics, observe_times


def _samples(metrics: GatewayMetrics) -> dict[str, float]:
    page = metrics.render().decode()
    found = {}
    for line in page.splitlines():
        if line.startswith("kiln_decoder") or line.startswith("kiln_requests_per_step"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


@pytest.mark.parametrize(
    ("rows", "requests", "seconds"), [(8, 2, 0.01), (48, 12, 0.0007), (10**6, 10**5, 30.0)]
)
def test_n_steps_at_once_are_the_series_of_n_single_steps(rows, requests, seconds):
    one_by_one, at_once = GatewayMetrics(), GatewayMetrics()
    for _ in range(7):
        one_by_one.observe_decode_step("m", rows, requests, seconds)
    at_once.observe_decode_step("m", rows, requests, seconds, 7)
    want, got = _samples(one_by_one), _samples(at_once)
    assert got.keys() == want.keys() and any(re.search(r"_bucket\{", k) for k in got)
    for name, value in want.items():  # a sum of seven additions against one product: rounding apart
        assert math.isclose(got[name], value, rel_tol=1e-12), name


def test_observe_times_falls_back_to_single_observations_without_histogram_fields():
    seen = []

    class Plain:
        def observe(self, value):  # noqa: ANN001, ANN202
            seen.append(value)

    observe_times(Plain(), 3.0, 4)
    assert seen == [3.0] * 4
    histogram = Histogram("h_seconds", "h", buckets=(1.0, 2.0), registry=CollectorRegistry())
    observe_times(histogram, 1.5, 3)
    counts = {
        s.labels.get("le"): s.value for s in histogram.collect()[0].samples if s.name.endswith("_bucket")
    }
    assert counts == {"1.0": 0.0, "2.0": 3.0, "+Inf": 3.0}
