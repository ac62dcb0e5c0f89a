"""Every ``rate()`` the autoscalers read spans enough scrapes to have two samples (files alone, no kubectl).

PromQL's ``rate()`` returns nothing for a series with fewer than two samples in its window, and a
scrape can fail or land late, so the usual rule is a window of four scrape intervals. Over ``[1m]``, a
pod scraped every minute (Prometheus's own default) had at most one sample: the gateway rules read
their fallback, 0, under any load, Triton's rule and KEDA's query no value at all."""

from __future__ import annotations

import re

import yaml

from tests.test_deploy import ADAPTER_RULES, DEPLOY

INFERENCE_SERVICE = DEPLOY / "kserve" / "inferenceservice.yaml"
DOCS = DEPLOY.parent / "docs" / "deploy.md"
# The interval docs/deploy.md asks Prometheus to scrape the pods at (the Prometheus operator's default).
SCRAPE_INTERVAL_S = 30
SCRAPES_PER_WINDOW = 4  # two samples even with a failed scrape and one not yet ingested
UNITS_S = {"s": 1, "m": 60, "h": 3600}


def rate_windows_s(query: str) -> list[int]:
    """The range, in seconds, of every ``rate(...[range])`` in a PromQL query."""
    ranges = re.findall(r"\brate\([^()]*\[(\d+)([smh])\]\)", query)
    assert len(ranges) == query.count("rate("), f"a rate() range this test cannot read: {query}"
    return [int(n) * UNITS_S[unit] for n, unit in ranges]


def autoscaler_queries() -> dict[str, str]:
    """Every query an autoscaler in deploy/ reads: the adapter's rules and KServe's KEDA query."""
    rules = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]["custom"]
    queries = {rule["name"]["as"]: rule["metricsQuery"] for rule in rules}
    (metric,) = yaml.safe_load(INFERENCE_SERVICE.read_text())["spec"]["predictor"]["autoScaling"]["metrics"]
    queries["InferenceService (KEDA)"] = metric["external"]["metric"]["query"]
    return queries


def test_every_autoscaler_rate_spans_four_scrapes_at_the_documented_interval() -> None:
    windows = {name: rate_windows_s(query) for name, query in autoscaler_queries().items()}
    assert any(windows.values()), "no rate() found: the queries changed"
    for name, spans in windows.items():
        for span in spans:
            assert span >= SCRAPES_PER_WINDOW * SCRAPE_INTERVAL_S, (
                f"{name}: rate() over {span} s, fewer than {SCRAPES_PER_WINDOW} scrapes every "
                f"{SCRAPE_INTERVAL_S} s: a missed scrape leaves it no value (the gateway's fallback reads 0)"
            )


def test_the_docs_ask_for_the_scrape_interval_the_windows_assume() -> None:
    text = " ".join(DOCS.read_text().split())
    assert f"every {SCRAPE_INTERVAL_S} s or more often" in text
