"""Prometheus metrics of one gateway app (its own CollectorRegistry, so apps and tests never collide).

Several ``--workers`` processes answer on one port, and a scrape reaches one of them. So that every
scrape counts every worker (a series that switched between two processes' counters from one scrape to
the next would read to Prometheus as a counter reset, and rates and autoscalers built on it would be
wrong), ``serving.workers`` gives its workers one directory in ``PROMETHEUS_MULTIPROC_DIR``:
prometheus_client then keeps each process's values in files there (its multiprocess mode) and
:meth:`GatewayMetrics.render` sums them over every worker, gauges of requests in flight and waiting
over the live ones. The series themselves (names, help, labels, buckets) are declared in
:mod:`serving.metric_families`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.samples import Sample

from serving import metrics_files, process_tree
from serving.errors import DeadlineExceeded, ModelNotFound, ServingError, Unavailable
from serving.execution.base import Backend, InferRequest, InferResponse
from serving.metric_families import CLIENT_LEFT, MetricFamilies
from serving.open_files import open_metric_files

T = TypeVar("T")

COUNTED = "_kiln_counted"  # set on an error observed() has counted
# A request cancelled this close to its client's deadline, or past it, was ended by the deadline (504),
# not by a client gone (499): Kiln's gRPC server cancels it at the deadline and grpc core's cancels it
# a moment after (each often ahead of the backend's own limit, whose 504 then never comes), and the
# client resets it as its own deadline passes, counted from before it sent the call, so its reset comes
# a little ahead of the deadline the server counts from the call's arrival (2-3 ms with tritonclient
# on one machine)
DEADLINE_SLACK_S = 0.01

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when a process starts
SHARED_REFRESH_S = 1.0  # how often a worker publishes its queue depths when the workers share metrics
# a process's file of live gauges (in flight, queue depth, workers, connections, placement): counted
# while its process runs; prometheus_client names each by its mode and the process's pid
LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")
FILE_HEADER_BYTES = 8  # a metrics file's used length and padding, written once prometheus_client sized it


class GatewayMetrics(MetricFamilies):
    """The gateway's metrics (:class:`~serving.metric_families.MetricFamilies`: request counts, latency
    histograms, batch sizes, in-flight, queue depth...), recorded through label children looked up once,
    and rendered for a scrape: this worker's own values, or every worker's summed."""

    def __init__(self, worker: int = 0, tree_root: int | None = None) -> None:
        """``worker``: this process's index among ``--workers``; ``tree_root``: the process whose tree is
        the gateway (``--workers``' parent; by default this process), read at every scrape."""
        # the workers' values live in files that render() sums (module docstring); set at start-up only
        self.shared_dir = os.environ.get(MULTIPROCESS_ENV) or None
        # prometheus_client's `<name>_created` series exist only where a process keeps its own values:
        # a lone gateway's scrape held 14 of them that --workers' did not, and no docs named them
        disable_created_metrics()
        lone = tree_root is None or tree_root == os.getpid()
        if self.shared_dir is not None:  # before this process writes its own there
            metrics_files.install()
            forget_gone_processes(self.shared_dir, own=lone)
        super().__init__(worker, os.getpid() if tree_root is None else tree_root)
        if self.shared_dir is not None:  # while descriptors are free (serving.open_files)
            open_metric_files(self.registry)
        # shared: values read from this worker's own objects (queue depths, open connections), published
        # periodically, keyed by their gauge's child
        self._watched: dict[Any, Callable[[], int]] = {}
        # the status a request cancelled from now on is counted by, not 499 (:meth:`stop_cuts`)
        self.cut_status: int | None = None
        self._refresh: asyncio.TimerHandle | None = None
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._versioned: dict[tuple[Any, ...], Any] = {}
        self._queue_reads: dict[str, dict[Callable[[], int], Callable[[], int]]] = {}  # by model
        # what lists the versions each model is served in, which label the versioned series
        # (``metadata(model).versions``): the gateway as it starts, so a backend's own list (Triton's
        # index) labels them, not the gateway's repository; without it, the version asked labels them
        # as given (tests' lone metrics)
        self.repository: Any = None

    def stop_cuts(self) -> None:
        """The gateway's stop is cutting the requests and calls still in flight (its grace ran out, or a
        second Ctrl-C): each is answered 503 (an HTTP request whose answer had not begun:
        :meth:`serving.app.GatewayServer._answer_cuts_503`) or ends ``UNAVAILABLE`` (a gRPC call), so
        one cancelled from now on is counted by that status, as its client saw it, not as a client gone
        (499)."""
        self.cut_status = Unavailable.status

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: the hot path records without the label lookup."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def versioned(self, metric: Any, model: str, asked: str, *labels: str) -> Any:
        """``metric``'s child for ``model`` in the version a request for version ``asked`` ("": the
        model's default) is served by, looked up once per (model, asked): the hot path does no more than
        :meth:`child`. An unknown version is counted as the default one's and never kept, so a client's
        made-up versions add neither a series nor an entry here."""
        key = (id(metric), model, asked, labels)  # labels as the tuple given: no list built
        found = self._versioned.get(key)
        if found is None:
            served, known = self.served_version(model, asked)
            found = metric.labels(model, served, *labels)
            if known:
                self._versioned[key] = found
        return found

    def served_version(self, model: str, asked: str) -> tuple[str, bool]:
        """The version label of a request for ``model`` in version ``asked`` (the latest where empty or
        unknown: the newest that loaded, where the backend tells it, as that one answers; "" for an
        entry without versions), and whether ``asked`` is one the model serves."""
        if self.repository is None:
            return asked, True
        try:
            versions = self.repository.metadata(model).versions
        except ServingError:  # Triton's list not fetched yet (or unreachable): no version a client
            return "", False  # named becomes a label, so its made-up versions mint no series
        if asked in versions:
            return asked, True
        latest = getattr(self.repository, "latest_version", None)
        if latest is not None and versions:  # the one that answers it: a broken newest version does not
            with contextlib.suppress(ServingError):
                return latest(model), not asked
        return (versions[-1] if versions else ""), not asked

    def refused(self, name: str, error: BaseException, status: int, version: str = "") -> None:
        """A request for model ``name`` (one of the repository's: labels stay bounded) in ``version``
        (as asked: :meth:`versioned`) that ended before :func:`observed` saw it (its body, tensors or
        options refused): counted as a failure by the ``status`` it was answered with in
        ``kiln_requests_total`` and ``kiln_request_failures_total``, once; no latency."""
        if getattr(error, COUNTED, False) or status == ModelNotFound.status:  # 404: not that model's
            return
        self.child(self.request_failures, name, str(status)).inc()
        self.versioned(self.requests, name, version, "failure").inc()

    def set_placement(self, model: str, version: str, placement: Any) -> None:
        """Publish a loaded model's placement (a :class:`~serving.execution.placement.Placement`)."""
        buckets = ",".join(map(str, placement.buckets)) or "off"
        self.placement.labels(model, version, placement.provider, placement.device, buckets).set(1)

    def observe_queue(self, model: str, seconds: float) -> None:
        self.child(self.queue_latency, model).observe(seconds)

    def observe_batch(
        self,
        model: str,
        items: int,
        requests: int,
        queued_s: float,
        input_s: float,
        infer_s: float,
        output_s: float,
        version: str = "",
    ) -> None:
        """One executed batch of ``items`` from ``requests`` requests of ``model`` in ``version``: their
        queue times summed, the time of each of its parts. Its runs by size are counted last: statistics
        read them as the sign that all of the batch is in."""
        self.child(self.compute_latency, model).observe(input_s + infer_s + output_s)
        self.child(self.batch_size, model).observe(items)
        self.versioned(self.executed_requests, model, version).inc(requests)
        if queued_s:  # a lone request run on the loop waited in no queue,
            self.versioned(self.request_stage_seconds, model, version, "queue").inc(queued_s)
        size = str(items)
        for part, seconds in (("input", input_s), ("infer", infer_s), ("output", output_s)):
            if seconds:  # and had no merge or split: ~1 us a zero not added
                self.versioned(self.request_stage_seconds, model, version, part).inc(seconds * requests)
                self.versioned(self.batch_seconds, model, version, size, part).inc(seconds)
        self.versioned(self.last_inference, model, version).set(time.time())
        self.versioned(self.batch_runs, model, version, size).inc()

    def watch_queue_depth(self, model: str, read: Callable[[], int]) -> None:
        """Read one of ``model``'s queues when scraped: always current, and nothing to record per
        request. Its series reads the sum of every queue given for it (the batcher of each version it
        serves, a translator's waiting across its decode workers): an alert on a model's depth sees its
        whole backlog, which the batcher watched last alone had shown. ``read`` is kept by equality, so
        a bound method given again (its owner started again) is still one queue."""
        reads = self._queue_reads.setdefault(model, {})
        reads[read] = read
        self._watch(self.child(self.queue_depth, model), partial(_summed, reads))

    def watch_connections(self, protocol: str, read: Callable[[], int]) -> None:
        """Read the open connections of a server (``protocol``: http or grpc) when scraped."""
        self._watch(self.open_connections.labels(protocol), read)

    def _watch(self, child: Any, read: Callable[[], int]) -> None:
        """``child`` reads ``read()`` when scraped. With the workers' metrics shared, a scrape cannot
        call into the other workers: each one publishes its values every ``SHARED_REFRESH_S`` from its
        event loop (the caller's)."""
        if self.shared_dir is None:
            child.set_function(read)
            return
        self._watched[child] = read
        if self._refresh is None:
            self._publish_watched()

    def _publish_watched(self) -> None:
        for child, read in self._watched.items():
            child.set(read())
        self._refresh = asyncio.get_running_loop().call_later(SHARED_REFRESH_S, self._publish_watched)

    def observe_decode_step(
        self, model: str, rows: float, requests: int, seconds: float, steps: int = 1
    ) -> None:
        """``steps`` decoder steps of ``rows`` rows (their mean) for ``requests`` requests, ``seconds``
        each (a compiled call runs up to 16): each histogram updated once for all of them
        (:func:`observe_times`)."""
        self.versioned(self.decoder_steps, model, "").inc(
            steps
        )  # every version's requests share it: the latest's
        observe_times(self.child(self.rows_per_step, model), rows, steps)
        observe_times(self.child(self.requests_per_step, model), requests, steps)
        observe_times(self.child(self.decoder_step_latency, model), seconds, steps)

    def observe_release(self, model: str, kind: str) -> None:
        """An idle decode worker (``decode``) or batch instance (``batch``) handed back what a burst grew."""
        self.child(self.memory_releases, model, kind).inc()

    def observe_worker_death(self, model: str, outcome: str) -> None:
        """A translator's decode thread died: ``restarted`` (it serves again after a backoff) or
        ``stopped`` (for good)."""
        self.child(self.decode_worker_deaths, model, outcome).inc()

    def observe_translation(
        self,
        model: str,
        seconds: float,
        tokens: int,
        outcome: str,
        texts: int = 1,
        queued: float | None = None,
        version: str = "",
    ) -> None:
        """A translator's answered request, counted under the ``version`` it named (as its outcome is,
        :func:`observed`): a version's statistics had its successes without their queue, compute and
        texts, which went to the latest's."""
        self.child(self.translate_latency, model, outcome).observe(seconds)
        if outcome == "success":  # a failed or timed-out request returns none of its finished texts
            self.child(self.tokens_generated, model).inc(tokens)
            self.versioned(self.translated_texts, model, version).inc(texts)
            self.versioned(self.last_inference, model, version).set(time.time())
            if queued is not None:  # the statistics' queue and compute (infer) of a decoded request
                self.versioned(self.executed_requests, model, version).inc()
                self.versioned(self.request_stage_seconds, model, version, "queue").inc(queued)
                infer = max(0.0, seconds - queued)
                self.versioned(self.request_stage_seconds, model, version, "infer").inc(infer)

    def render(self) -> bytes:
        """The exposition text: this app's registry, or, with the workers' metrics shared, every
        worker's values summed (``prometheus_client.multiprocess``). Called off the event loop (the
        ``/metrics`` route): it only reads what the loop owns, from a copy of the watched table."""
        if self.shared_dir is None:
            return generate_latest(self.registry)
        for child, read in list(self._watched.items()):  # this worker's own, current at the scrape
            child.set(read())
        registry = CollectorRegistry()
        registry.register(SharedFilesCollector(self.shared_dir))
        registry.register(self.tree)  # the whole tree, whichever worker reads it
        return generate_latest(registry)

    def sample(self, name: str, **labels: Any) -> float | None:
        """The value of the samples of ``name`` with ``labels``, summed over the labels left out (a
        model's over its versions); None where none has them (for tests and the bench)."""
        found = [
            sample.value
            for metric in self.registry.collect()
            for sample in metric.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        ]
        return sum(found) if found else None

    def statistics_samples(self, models: Collection[str] | None = None) -> list[Any]:
        """The samples of the series the statistics extension reads (``prometheus_client`` Samples):
        this app's, or, with the workers' metrics shared, every worker's summed from their counter and
        max-gauge files only (reading every file, histograms included, cost a statistics call ~3x).
        ``models``: those models' samples alone (one model's statistics read every model's series,
        10 ms on the event loop a call with 200 models, 16 ms with two workers: a poll of each model in
        turn grew with the square of the models)."""
        if models is not None:
            return list(self._model_samples(set(models)))
        if self.shared_dir is None:
            families = [family for metric in self._statistics_metrics() for family in metric.collect()]
        else:
            from prometheus_client.multiprocess import MultiProcessCollector

            files = [
                str(p)
                for kind in ("counter", "gauge_max")
                for p in Path(self.shared_dir).glob(f"{kind}_*.db")
            ]
            families = MultiProcessCollector.merge(holding_values(files), accumulate=True)
        return [sample for family in families for sample in family.samples]

    def _statistics_metrics(self) -> tuple[Any, ...]:
        """The metrics the statistics extension reads, every one labelled by ``model``."""
        return (
            self.requests,
            self.request_seconds,
            self.executed_requests,
            self.request_stage_seconds,
            self.batch_runs,
            self.batch_seconds,
            self.last_inference,
            self.translated_texts,
            self.decoder_steps,
        )

    def _model_samples(self, models: set[str]) -> Iterator[Sample]:
        """:meth:`statistics_samples` of ``models`` alone, the others' series never made into samples:
        this process's label children of those models, or, with the workers' metrics shared, the
        entries of their counter and max-gauge files whose key names one of them (counters summed, max
        gauges their largest, as ``MultiProcessCollector`` merges them)."""
        if self.shared_dir is None:
            for metric in self._statistics_metrics():
                at = metric._labelnames.index("model")
                with metric._lock:
                    children = [(v, c) for v, c in metric._metrics.items() if v[at] in models]
                for values, child in children:
                    labels = dict(zip(metric._labelnames, values, strict=True))
                    for suffix, extra, value, *_ in child._samples():
                        yield Sample(metric._name + suffix, {**labels, **extra}, value)
            return
        marks = [f'"model": {json.dumps(model)}' for model in models]  # as prometheus_client keys them
        totals: dict[tuple[str, tuple], float] = defaultdict(float)
        largest: dict[tuple[str, tuple], float] = {}
        for kind in ("counter", "gauge_max"):
            for name in holding_values(str(p) for p in Path(self.shared_dir).glob(f"{kind}_*.db")):
                try:
                    entries = list(MmapedDict.read_all_values_from_file(name))
                except FileNotFoundError:
                    continue
                for key, value, _, _ in entries:
                    if not any(mark in key for mark in marks):
                        continue
                    _, sample_name, labels, _ = json.loads(key)
                    if labels.get("model") not in models:
                        continue
                    series = (sample_name, tuple(sorted(labels.items())))
                    if kind == "counter":
                        totals[series] += value
                    elif series not in largest or value > largest[series]:
                        largest[series] = value
        for (sample_name, labels), value in (*totals.items(), *largest.items()):
            yield Sample(sample_name, dict(labels), value)


class SharedFilesCollector:
    """Every worker's values, summed from their files in ``directory``
    (``prometheus_client.multiprocess.MultiProcessCollector``, less the files being created)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Any:
        from prometheus_client.multiprocess import MultiProcessCollector

        files = holding_values(str(p) for p in Path(self.directory).glob("*.db"))
        return MultiProcessCollector.merge(files, accumulate=True)


def observe_times(histogram: Any, value: float, times: int) -> None:
    """``histogram.observe(value)`` ``times`` times, as one update of its sum and of its bucket:
    with the workers' metrics shared an observation costs ~4 us (each value written to its file), and
    the decode thread observed three histograms at every step of a compiled call of up to 16 steps.
    Through ``prometheus_client``'s Histogram fields (``_sum``, ``_buckets``, ``_upper_bounds``, as its
    ``observe`` updates them); observations one by one where a histogram has none of them."""
    buckets, bounds, total = (getattr(histogram, f, None) for f in ("_buckets", "_upper_bounds", "_sum"))
    if times == 1 or buckets is None or bounds is None or total is None:
        for _ in range(times):
            histogram.observe(value)
        return
    total.inc(value * times)
    for bucket, bound in zip(buckets, bounds, strict=True):
        if value <= bound:
            bucket.inc(times)
            break


def _summed(reads: dict[Callable[[], int], Callable[[], int]]) -> int:
    """The sum of a model's queues (a copy of the table: read off the event loop at a scrape)."""
    return sum(read() for read in list(reads.values()))


def holding_values(files: Iterable[str]) -> list[str]:
    """Those of the workers' metrics ``files`` that prometheus_client has sized: it creates each one
    empty, then sizes it, and a scrape or statistics call that read one in between (a worker's first
    value of a kind, often at its start) failed whole on it (``struct.error``: a 500)."""
    kept = []
    for name in files:
        try:
            if os.stat(name).st_size >= FILE_HEADER_BYTES:
                kept.append(name)
        except FileNotFoundError:  # a live gauges' file its gone process's bookkeeping removed
            continue
    return kept


def forget_gone_processes(directory: str | Path, *, own: bool = False) -> list[Path]:
    """Remove the live gauges' files of every process that no longer runs from the workers' metrics
    ``directory`` (with ``own``, those of this process's pid it has not opened: a previous process's,
    a container's first process has the same pid at every start). A gateway stopped without the
    bookkeeping its supervisor does as each worker ends (a lone one, or one whose parent was killed)
    left them, and a ``PROMETHEUS_MULTIPROC_DIR`` kept across restarts listed its workers, their
    placements and connections as live for good, and added its requests in flight to every later
    count. Counters, histograms and max gauges stay: what a gone process counted still counts.
    Returns what was removed; never fails (it runs as a gateway starts)."""
    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    mapped = _mapped_files() if own else None
    for entry in entries:
        match = LIVE_GAUGE_FILE.fullmatch(entry.name)
        if match is None:
            continue
        pid = int(match.group(1))
        try:
            if pid == os.getpid():
                if mapped is None or (entry.stat().st_dev, entry.stat().st_ino) in mapped:
                    continue
            elif process_tree.running(pid):
                continue
            entry.unlink(missing_ok=True)  # the workers of one gateway may sweep at once
        except OSError:
            continue
        removed.append(entry)
    return removed


def _mapped_files() -> set[tuple[int, int]] | None:
    """(device, inode) of every file this process maps (prometheus_client maps the metrics files it
    writes); None where procfs cannot tell (not Linux). Read as bytes: a mapped file's path is whatever
    bytes it was named in (not ASCII under a C locale, not always UTF-8), and its fields are ASCII."""
    try:
        lines = Path("/proc/self/maps").read_bytes().split(b"\n")  # a name's \n is \012, its \r raw
    except OSError:
        return None
    found = set()
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[4] != b"0":
            major, minor = (int(part, 16) for part in fields[3].split(b":"))
            found.add((os.makedev(major, minor), int(fields[4])))
    return found


def count_cut(metrics: GatewayMetrics, name: str, cut: asyncio.CancelledError, version: str = "") -> None:
    """A request for model ``name`` (already validated) cancelled before its model took it (its body
    read, or parsed in the JSON helper): counted once, by the stop's 503 where a stop cut it
    (:attr:`GatewayMetrics.cut_status`), else 499, and ``cut`` marked counted (the lean layer counts no
    more). A request uvicorn's cycle answers (a chunked body, ``Expect: 100-continue``) that the stop
    cut there was answered 503 and counted nowhere."""
    metrics.refused(name, cut, metrics.cut_status or CLIENT_LEFT, version)
    setattr(cut, COUNTED, True)


def failure_status(error: BaseException, deadline_due: bool = False, cut_status: int | None = None) -> str:
    """The status label of a failed request: its error's HTTP status; when it was cancelled, 504 where
    its client's deadline was due (``deadline_due``), else ``cut_status`` where a stop is cutting the
    requests in flight (the 503 their clients are answered: :attr:`GatewayMetrics.cut_status`), else
    499 (its client left, or its connection was cut without an answer); 500 for anything else (a bug
    of ours)."""
    if isinstance(error, ServingError):
        return str(error.status)
    if isinstance(error, asyncio.CancelledError):
        return str(DeadlineExceeded.status if deadline_due else cut_status or CLIENT_LEFT)
    return "500"


async def observed_infer(backend: Backend, metrics: GatewayMetrics, request: InferRequest) -> InferResponse:
    """Run ``backend.infer`` (for a model name and version already validated), observed as
    :func:`observed` for the version it asks for."""
    return await observed(metrics, request.model, backend.infer(request), request.deadline_s, request.version)


async def observed(
    metrics: GatewayMetrics,
    name: str,
    work: Awaitable[T],
    deadline_s: float | None = None,
    version: str = "",
    started: float | None = None,
) -> T:
    """Await ``work`` for model ``name`` in ``version`` (as asked: :meth:`GatewayMetrics.versioned`)
    counting the outcome (a failure also by its status), the end-to-end latency and the in-flight gauge. ``deadline_s``: the time its client's deadline (gRPC's)
    leaves it, if any: cancelled once that is due (``DEADLINE_SLACK_S``), it failed by its deadline.
    ``started``: when the request's own work began (``time.monotonic()``), where that was before
    ``work`` (a friendly classify request's image decoding); else now."""
    started = time.monotonic() if started is None else started
    gauge = metrics.child(metrics.in_flight, name)
    gauge.inc()
    outcome = "failure"
    try:
        result = await work
        outcome = "success"
        return result
    except BaseException as error:  # counted and raised on: nothing added on the success path
        due = deadline_s is not None and time.monotonic() - started >= deadline_s - DEADLINE_SLACK_S
        metrics.child(metrics.request_failures, name, failure_status(error, due, metrics.cut_status)).inc()
        setattr(error, COUNTED, True)  # the front end's handler does not count it again (refused)
        raise
    finally:
        gauge.dec()
        seconds = time.monotonic() - started
        metrics.versioned(metrics.requests, name, version, outcome).inc()
        metrics.child(metrics.request_latency, name).observe(seconds)
        metrics.versioned(metrics.request_seconds, name, version, outcome).inc(seconds)
