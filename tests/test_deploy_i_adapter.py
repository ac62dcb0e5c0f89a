"""The prometheus-adapter rules give every gateway pod a value for every metric a gateway HPA reads,
whatever models the pod serves and before its first request (read from the files alone, no kubectl).

A histogram or labelled gauge has series only once observed: a classifier-only gateway never exposes
``kiln_decoder_rows_per_step_*``, a translator-only one never ``kiln_queue_latency_seconds_*`` (the
batchers alone observe it), and no gateway ``kiln_in_flight_requests`` before its first request. A rule
discovered from such a series gives those pods no value, and an HPA that cannot read one of its metrics
scales up on the others but never down (Kubernetes' HPA algorithm: "scaling is skipped")."""

from __future__ import annotations

import re
from typing import Any

import yaml

from serving.metrics import GatewayMetrics
from tests.test_deploy import ADAPTER_RULES, DEPLOY

GATEWAY_HPA = DEPLOY / "base" / "gateway" / "hpa.yaml"
GPU_GATEWAY_HPA_PATCH = DEPLOY / "overlays" / "gpu" / "gateway-hpa-in-flight.yaml"


def series_names(metrics: GatewayMetrics) -> set[str]:
    """The series names one scrape of ``metrics`` carries."""
    lines = metrics.render().decode().splitlines()
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in lines if line and not line.startswith("#")}


def loaded_pod(model: str) -> GatewayMetrics:
    """A gateway with ``model`` loaded (its queue watched, as the batcher or translator pool does at
    start) that has not been asked anything yet."""
    metrics = GatewayMetrics()
    metrics.watch_queue_depth(model, lambda: 0)
    return metrics


def classifier_pod() -> GatewayMetrics:
    """What a classifier-only gateway records once asked: a request in flight, its queue time."""
    metrics = loaded_pod("lenet")
    metrics.child(metrics.in_flight, "lenet").inc()
    metrics.observe_queue("lenet", 0.01)
    return metrics


def translator_pod() -> GatewayMetrics:
    """What a translator-only gateway records once asked: a request in flight, its decoder steps."""
    metrics = loaded_pod("gru")
    metrics.child(metrics.in_flight, "gru").inc()
    metrics.observe_decode_step("gru", 8, 2, 0.01)
    return metrics


def always_exposed() -> set[str]:
    """Series every gateway pod carries from its start, whatever its repository."""
    pods = (loaded_pod("lenet"), loaded_pod("gru"), classifier_pod(), translator_pod())
    return set.intersection(*(series_names(pod) for pod in pods))


def gateway_hpa_metrics() -> set[str]:
    """The pod metrics the gateway's HPAs read: the base's and the GPU overlay's replacement."""
    base = yaml.safe_load(GATEWAY_HPA.read_text())["spec"]["metrics"]
    (patch,) = yaml.safe_load(GPU_GATEWAY_HPA_PATCH.read_text())
    return {m["pods"]["metric"]["name"] for m in (*base, *patch["value"])}


def gateway_rules() -> dict[str, dict[str, Any]]:
    rules = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]["custom"]
    wanted = gateway_hpa_metrics()
    found = {rule["name"]["as"]: rule for rule in rules if rule["name"]["as"] in wanted}
    assert set(found) == wanted, wanted - set(found)
    return found


def test_the_pods_of_one_kind_of_model_lack_some_series_the_autoscalers_read() -> None:
    """Why the rules below need a fallback (guards the premise if the metrics change)."""
    assert "kiln_decoder_rows_per_step_sum" not in series_names(classifier_pod())
    assert "kiln_queue_latency_seconds_sum" not in series_names(translator_pod())
    assert "kiln_in_flight_requests" not in series_names(loaded_pod("lenet"))
    assert {"kiln_worker_info", "kiln_queue_depth"} <= always_exposed()


def test_every_gateway_autoscaler_metric_is_discovered_from_a_series_every_gateway_exposes() -> None:
    always = always_exposed()
    for name, rule in gateway_rules().items():
        (series,) = re.findall(r"^(\w+)\{", rule["seriesQuery"])
        assert series in always, f"{name}: discovered from {series}, which some gateway pods never expose"
        assert re.fullmatch(rule["name"]["matches"].strip("^$"), series), name


def test_every_gateway_autoscaler_metric_reads_zero_where_its_measured_series_are_absent() -> None:
    """The query's last alternative (after PromQL's ``or``, which fills in the pods the measured
    expression has no sample for) reads only series every pod exposes, times zero."""
    always = always_exposed()
    for name, rule in gateway_rules().items():
        query = " ".join(rule["metricsQuery"].split())
        read = set(re.findall(r"\b(kiln_\w+)\{", query))
        if read <= always:
            continue  # a gauge every pod carries (kiln_queue_depth): nothing to fall back from
        assert " or " in query, f"{name}: no value for a pod without {sorted(read - always)}"
        fallback = query.rsplit(" or ", 1)[1]
        assert re.search(r"\b0 \*", fallback), f"{name}: the fallback must read 0: {fallback}"
        assert set(re.findall(r"\b(kiln_\w+)\{", fallback)) <= always, f"{name}: {fallback}"
