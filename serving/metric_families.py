"""Every metric family a gateway exposes, declared in one place: name, help text, labels, buckets and
how the ``--workers`` processes' values combine (the README's metrics table is checked against them,
tests/test_docs_reference.py). :class:`serving.metrics.GatewayMetrics` records into them and renders them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from serving import process_tree

# From 100 us (a small classifier's batch computes in ~0.2 ms on a CPU core: with 0.5 ms the lowest
# bound, every such observation fell in one bucket and no quantile could be read) to 30 s (a long
# translation, and the default request timeout).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CLIENT_LEFT = 499  # nginx's "client closed request": a request cancelled before it was answered


class MetricFamilies:
    """The gateway's metric families, each an attribute, in a registry of their own (so apps and tests
    never collide): requests, latencies and batch sizes, what the statistics extension reads, the load
    (in flight, waiting, connections, placement), translators' decoding, and the process tree."""

    def __init__(self, worker: int, tree_root: int) -> None:
        """``worker``: this process's index among ``--workers``; ``tree_root``: the process whose tree is
        the gateway, read at every scrape."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.tree = ProcessTreeCollector(tree_root)
        r.register(self.tree)
        Gauge(
            "kiln_worker_info",
            "The gateway processes serving (one series per live worker)",
            ["worker", "pid"],
            registry=r,
            multiprocess_mode="liveall",
        ).labels(str(worker), str(os.getpid())).set(1)
        self._add_request_metrics()
        self._add_statistics_metrics()
        self._add_load_metrics()
        self._add_decoding_metrics()

    def _add_request_metrics(self) -> None:
        """Inference requests by outcome and by failure status; their latency end to end, in a batcher's
        queue and in execution; the size of the batches run."""
        r = self.registry
        self.requests = Counter(
            "kiln_requests",
            "Inference requests by model, version served and outcome",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.request_failures = Counter(
            "kiln_request_failures",
            "Failed inference requests by model and the HTTP status they ended with (gRPC: the status "
            f"its code stands for; {CLIENT_LEFT}: cancelled, its client gone; 503 also: cut by the gateway's "
            "stop; 504 also: a gRPC call cancelled as its deadline passed)",
            ["model", "status"],
            registry=r,
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

    def _add_statistics_metrics(self) -> None:
        """What Triton's statistics extension reports (serving.protocol.statistics), as counters only: so
        the workers' values add up, and a statistics call reads a few counters, not every histogram. Each
        carries the ``version`` that served (as Triton's ``nv_inference_*`` series do), so statistics
        answer per version; ``kiln_requests_total`` carries it too, for the same reason."""
        r = self.registry
        self.request_seconds = Counter(
            "kiln_request_seconds",
            "End-to-end time of inference requests, summed, by version served and outcome",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.executed_requests = Counter(
            "kiln_executed_requests",
            "Requests the batcher ran (in batches of any size), or a translator decoded to success",
            ["model", "version"],
            registry=r,
        )
        self.request_stage_seconds = Counter(
            "kiln_request_stage_seconds",
            "Time of the requests the batcher ran, summed, by stage: queue (each its own wait), then the "
            "batch each ran in, once per request: input (merging it), infer (the model's run), output "
            "(splitting the answers); a translator's: queue (until its sentences joined the decode batch) "
            "and infer (from then to its answer)",
            ["model", "version", "stage"],
            registry=r,
        )
        self.batch_runs = Counter(
            "kiln_batch_runs",
            "Executed batches by batch size (items)",
            ["model", "version", "size"],
            registry=r,
        )
        self.batch_seconds = Counter(
            "kiln_batch_seconds",
            "Execution time of batches, summed, by batch size (items) and part (input, infer, output)",
            ["model", "version", "size", "part"],
            registry=r,
        )
        self.last_inference = Gauge(
            "kiln_last_inference_timestamp_seconds",
            "When the model version last ran a batch (a translator: last answered), Unix time",
            ["model", "version"],
            registry=r,
            multiprocess_mode="max",
        )
        self.translated_texts = Counter(
            "kiln_translated_texts",
            "Texts of successful translation requests",
            ["model", "version"],
            registry=r,
        )

    def _add_load_metrics(self) -> None:
        """What the gateway holds now: requests in flight and waiting, open connections (and those
        handed between workers), where each loaded model runs."""
        r = self.registry
        self.in_flight = Gauge(
            "kiln_in_flight_requests",
            "Requests being handled",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_depth = Gauge(
            "kiln_queue_depth",
            "Requests waiting for the model: in its versions' batchers, or to join a translator's "
            "decode batch",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        # one series per live worker (``pid``): connections reach the workers by the kernel's hash of
        # their addresses (SO_REUSEPORT), and each worker hands on what would leave it holding more
        # than another (serving/handoff.py): the split shows here
        self.open_connections = Gauge(
            "kiln_open_connections",
            "Client connections open, by protocol (HTTP, gRPC)",
            ["protocol"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.connections_handed = Counter(
            "kiln_connections_handed",
            "Accepted connections handed to the worker holding fewest, by protocol",
            ["protocol"],
            registry=r,
        )
        self.placement = Gauge(
            "kiln_model_placement",
            "Where each loaded model version runs (1 per model, and per worker pid with --workers): "
            "provider, device and bucket sizes",
            ["model", "version", "provider", "device", "buckets"],
            registry=r,
            multiprocess_mode="liveall",
        )

    def _add_decoding_metrics(self) -> None:
        """Translators: decoder steps, rows and requests per step (iteration-level batching), latency, tokens."""
        r = self.registry
        self.decoder_steps = Counter(
            "kiln_decoder_steps", "Decoder steps run", ["model", "version"], registry=r
        )
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
        self.memory_releases = Counter(
            "kiln_memory_releases",
            "Idle releases of the memory a burst grew (kind: decode worker or batch instance)",
            ["model", "kind"],
            registry=r,
        )
        self.decode_worker_deaths = Counter(
            "kiln_decode_worker_deaths",
            "Decode threads of a translator that died on an error, by what followed (outcome: "
            "restarted after a backoff, or stopped for good)",
            ["model", "outcome"],
            registry=r,
        )


class ProcessTreeCollector:
    """The gateway's processes together, read when scraped (:mod:`serving.process_tree`): memory as
    their proportional set size (the weights every worker maps count once), CPU time, and how many
    they are. Nothing where procfs cannot tell (not Linux)."""

    def __init__(self, root: int) -> None:
        self.root = root

    def collect(self) -> Iterator[Any]:
        use = process_tree.usage(self.root)
        if use is None:
            return
        yield GaugeMetricFamily(
            "kiln_process_memory_bytes",
            "Memory of the gateway's processes together (--workers' parent, its workers and their "
            "helpers): proportional set size, so pages they share (the models' weights) count once",
            value=use.pss_bytes,
        )
        yield CounterMetricFamily(
            "kiln_process_cpu_seconds",
            "User and system CPU time of the gateway's processes together (the live ones and their "
            "exited children)",
            value=use.cpu_seconds,
        )
        yield GaugeMetricFamily(
            "kiln_processes",
            "The gateway's processes (workers, their parent and helpers)",
            value=use.processes,
        )
