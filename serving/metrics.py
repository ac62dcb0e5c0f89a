"""Prometheus metrics of one gateway app (its own CollectorRegistry, so apps and tests never collide)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serving.execution.base import Backend, InferRequest, InferResponse

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class GatewayMetrics:
    """Request counts, latency histograms (queue, compute, end to end), batch sizes, in-flight, queue depth."""

    def __init__(self, worker: int = 0) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # Each --workers process keeps its own registry and a scrape reaches one of them: this says which.
        Gauge(
            "kiln_worker_info", "The gateway process that answered this scrape", ["worker", "pid"], registry=r
        ).labels(str(worker), str(os.getpid())).set(1)
        self.requests = Counter(
            "kiln_requests", "Inference requests by model and outcome", ["model", "outcome"], registry=r
        )
        self.request_latency = Histogram(
            "kiln_request_latency_seconds",
            "End-to-end inference latency",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_latency = Histogram(
            "kiln_queue_latency_seconds",
            "Time spent waiting in the batcher queue",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_latency = Histogram(
            "kiln_compute_latency_seconds",
            "Model execution time per batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "kiln_batch_size", "Items per executed batch", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.in_flight = Gauge("kiln_in_flight_requests", "Requests being handled", ["model"], registry=r)
        self.queue_depth = Gauge(
            "kiln_queue_depth", "Requests waiting in the batcher queue", ["model"], registry=r
        )
        self.placement = Gauge(
            "kiln_model_placement",
            "Where each loaded model version runs (1 per model): provider, device and bucket sizes",
            ["model", "version", "provider", "device", "buckets"],
            registry=r,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._add_decoding_metrics()

    def _add_decoding_metrics(self) -> None:
        """Translators: decoder steps, rows and requests per step (iteration-level batching), latency, tokens."""
        r = self.registry
        self.decoder_steps = Counter("kiln_decoder_steps", "Decoder steps run", ["model"], registry=r)
        self.rows_per_step = Histogram(
            "kiln_decoder_rows_per_step",
            "Beam rows per decoder step",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.requests_per_step = Histogram(
            "kiln_decoder_requests_per_step",
            "Distinct requests sharing one decoder step",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.decoder_step_latency = Histogram(
            "kiln_decoder_step_seconds", "Decoder step time", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.translate_latency = Histogram(
            "kiln_translate_latency_seconds",
            "Translation latency (queue + encode + decode)",
            ["model", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_generated = Counter(
            "kiln_tokens_generated", "Tokens in the returned hypotheses", ["model"], registry=r
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: the hot path records without the label lookup."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def set_placement(self, model: str, version: str, placement: Any) -> None:
        """Publish a loaded model's placement (a :class:`~serving.execution.placement.Placement`)."""
        buckets = ",".join(map(str, placement.buckets)) or "off"
        self.placement.labels(model, version, placement.provider, placement.device, buckets).set(1)

    def observe_queue(self, model: str, seconds: float) -> None:
        self.child(self.queue_latency, model).observe(seconds)

    def observe_batch(self, model: str, items: int, compute_s: float) -> None:
        self.child(self.batch_size, model).observe(items)
        self.child(self.compute_latency, model).observe(compute_s)

    def watch_queue_depth(self, model: str, read: Callable[[], int]) -> None:
        """Read a batcher's queue depth when scraped: always current, and nothing to record per request."""
        self.child(self.queue_depth, model).set_function(read)

    def observe_decode_step(self, model: str, rows: int, requests: int, seconds: float) -> None:
        self.child(self.decoder_steps, model).inc()
        self.child(self.rows_per_step, model).observe(rows)
        self.child(self.requests_per_step, model).observe(requests)
        self.child(self.decoder_step_latency, model).observe(seconds)

    def observe_translation(self, model: str, seconds: float, tokens: int, outcome: str) -> None:
        self.child(self.translate_latency, model, outcome).observe(seconds)
        self.child(self.tokens_generated, model).inc(tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def sample(self, name: str, **labels: Any) -> float | None:
        """One sample's value (for tests and the bench)."""
        return self.registry.get_sample_value(name, labels)


async def observed_infer(backend: Backend, metrics: GatewayMetrics, request: InferRequest) -> InferResponse:
    """Run ``backend.infer`` (for a model name already validated) counting the outcome, the end-to-end latency and the in-flight gauge."""
    started = time.monotonic()
    gauge = metrics.child(metrics.in_flight, request.model)
    gauge.inc()
    outcome = "failure"
    try:
        response = await backend.infer(request)
        outcome = "success"
        return response
    finally:
        gauge.dec()
        metrics.child(metrics.requests, request.model, outcome).inc()
        metrics.child(metrics.request_latency, request.model).observe(time.monotonic() - started)
