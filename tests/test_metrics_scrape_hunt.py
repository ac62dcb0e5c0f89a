"""/metrics as a Prometheus server reads it when the workers share their metrics through files
(``PROMETHEUS_MULTIPROC_DIR``): a scrape never fails on a file a worker is creating, and the live
gauges of processes gone (a gateway killed, or a lone one stopped, in a directory kept across
restarts) are not counted as live by the next gateway, while what they counted still counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from serving.metrics import MULTIPROCESS_ENV, GatewayMetrics, forget_gone_processes


def _gone_pid() -> int:
    """A pid no process has now (reused only after the counter wraps)."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def _write(
    directory: Path, kind: str, pid: int, values: list[tuple[str, str, dict[str, str], float]]
) -> Path:
    """A worker's metrics file as prometheus_client writes it: ``kind`` (counter, gauge_liveall...),
    each value as (family, sample name, labels, value)."""
    path = directory / f"{kind}_{pid}.db"
    written = MmapedDict(str(path))
    try:
        for family, name, labels, value in values:
            written.write_value(
                mmap_key(family, name, list(labels), list(labels.values()), "help"), value, 0.0
            )
    finally:
        written.close()
    return path


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def test_a_scrape_and_a_statistics_call_read_past_a_metrics_file_a_worker_is_still_creating(
    tmp_path, monkeypatch
):
    """prometheus_client creates a worker's file empty, then sizes it: a scrape (or a statistics call)
    reaching another worker in between failed whole on it (struct.error, a 500)."""
    monkeypatch.setenv(MULTIPROCESS_ENV, str(tmp_path))
    metrics = GatewayMetrics()
    requests = ("kiln_requests", "kiln_requests_total", {"model": "m", "outcome": "success"}, 3.0)
    _write(tmp_path, "counter", 4242, [requests])
    (tmp_path / "counter_4243.db").touch()  # opened, not yet sized
    page = metrics.render().decode()
    assert _samples(page, "kiln_requests_total") == [({"model": "m", "outcome": "success"}, 3.0)]
    counted = [s.value for s in metrics.statistics_samples() if s.name == "kiln_requests_total"]
    assert counted == [3.0]


def test_a_gateway_starting_on_a_kept_metrics_directory_forgets_the_live_gauges_of_processes_gone(
    tmp_path, monkeypatch
):
    """A previous gateway's worker, gone without its supervisor's bookkeeping, left its live gauges:
    the next gateway listed it as a worker, its model's placement and connections as live, and added
    its requests in flight for good. Its counters still count; a running process's gauges stay."""
    gone, running = _gone_pid(), os.getppid()
    info = ("kiln_worker_info", "kiln_worker_info", {"worker": "0", "pid": str(gone)}, 1.0)
    in_flight = ("kiln_in_flight_requests", "kiln_in_flight_requests", {"model": "m"}, 3.0)
    requests = ("kiln_requests", "kiln_requests_total", {"model": "m", "outcome": "success"}, 5.0)
    _write(tmp_path, "gauge_liveall", gone, [info])
    _write(tmp_path, "gauge_livesum", gone, [in_flight])
    _write(tmp_path, "counter", gone, [requests])
    alive = _write(
        tmp_path, "gauge_liveall", running, [(*info[:2], {"worker": "1", "pid": str(running)}, 1.0)]
    )
    monkeypatch.setenv(MULTIPROCESS_ENV, str(tmp_path))
    page = GatewayMetrics().render().decode()
    assert [labels["pid"] for labels, _ in _samples(page, "kiln_worker_info")] == [str(running)]
    assert _samples(page, "kiln_in_flight_requests") == []
    assert _samples(page, "kiln_requests_total") == [({"model": "m", "outcome": "success"}, 5.0)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"counter_{gone}.db", alive.name])


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="tells its own files by procfs")
def test_a_lone_gateway_forgets_a_previous_process_of_its_own_pid_but_never_its_own_live_gauges(tmp_path):
    """A container's first process has the same pid at every start: the live gauges a killed one
    left under that pid are a previous process's (its requests in flight stayed counted), unless this
    process maps the file (it wrote them)."""
    mine = os.getpid()
    in_flight = ("kiln_in_flight_requests", "kiln_in_flight_requests", {"model": "m"}, 2.0)
    previous = _write(tmp_path, "gauge_livesum", mine, [in_flight])
    assert forget_gone_processes(tmp_path) == []  # not asked about its own pid
    assert forget_gone_processes(tmp_path, own=True) == [previous]
    written = MmapedDict(str(previous))  # this process writing its own
    try:
        assert forget_gone_processes(tmp_path, own=True) == []
        assert previous.exists()
    finally:
        written.close()


def test_workers_started_on_a_given_metrics_directory_find_no_live_gauges_of_a_gateway_gone(
    tmp_path, monkeypatch
):
    """``--workers`` with ``PROMETHEUS_MULTIPROC_DIR`` set: the parent forgets what a gateway killed
    there left live before its workers start (their pids may be the gone workers' again)."""
    from serving import workers

    gone = _gone_pid()
    stale = _write(tmp_path, "gauge_liveall", gone, [("kiln_worker_info", "kiln_worker_info", {}, 1.0)])
    counter = _write(tmp_path, "counter", gone, [("kiln_requests", "kiln_requests_total", {}, 1.0)])
    monkeypatch.setenv(MULTIPROCESS_ENV, str(tmp_path))
    found: list[list[str]] = []

    class NoWorker:  # what the supervisor is handed: no process started
        def __init__(self, *_args: object, **_kwargs: object) -> None:
            found.append(sorted(p.name for p in tmp_path.iterdir()))

    monkeypatch.setattr(workers.subprocess, "Popen", NoWorker)
    monkeypatch.setattr(workers, "_supervise", lambda procs, shared: 0)
    assert workers.run_workers(["--model-repository", str(tmp_path)], 2) == 0
    assert found == [[counter.name], [counter.name]]  # gone before the first worker starts
    assert not stale.exists() and tmp_path.is_dir()  # a given directory is left in place


def test_a_lone_gateways_scrape_holds_the_series_a_workers_one_does_and_no_created_gauges(monkeypatch):
    """A one-process gateway exposed prometheus_client's ``<name>_created`` gauge for every counter and
    histogram, which a --workers scrape never has: one dashboard saw two sets of series."""
    monkeypatch.delenv(MULTIPROCESS_ENV, raising=False)
    metrics = GatewayMetrics()
    metrics.child(metrics.requests, "m", "1", "success").inc()
    metrics.observe_queue("m", 0.001)
    page = metrics.render().decode()
    names = {s.name for family in text_string_to_metric_families(page) for s in family.samples}
    assert {"kiln_requests_total", "kiln_queue_latency_seconds_count"} <= names
    assert not [n for n in names if n.endswith("_created")]
