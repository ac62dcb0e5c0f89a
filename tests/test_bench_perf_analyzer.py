"""perf_analyzer integration: how it is found, what it is asked, how its CSV becomes report rows.

The binary itself runs only where it is installed (``make perf-analyzer``); nothing here times anything.
"""

from __future__ import annotations

import math
import stat
import subprocess
from pathlib import Path

import pytest

from bench import perf_analyzer as pa
from bench import perf_analyzer_tool as pa_tool
from bench import report, server_watch
from bench.targets import best_direct_throughput, targets

# What perf_analyzer 2.48 writes with -f (latencies in microseconds).
CSV = (
    "Concurrency,Inferences/Second,Client Send,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
)
CSV += "1,223.476,4,2,3125,8026,9282,12143\n"


def test_the_csv_gives_throughput_and_latency_percentiles_in_milliseconds(tmp_path):
    path = tmp_path / "pa.csv"
    path.write_text(CSV)
    assert pa_tool.parse_csv(path) == {
        "throughput_rps": 223.476,
        "p50_ms": 3.125,
        "p90_ms": 8.026,
        "p95_ms": 9.282,
        "p99_ms": 12.143,
    }


def test_the_csv_of_a_server_with_statistics_gives_its_split_of_a_request_too(tmp_path):
    path = tmp_path / "pa.csv"
    path.write_text(
        "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
        "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
        "p50 latency,p90 latency,p95 latency,p99 latency\n"
        "4,786.96,5,640,1493,41,2476,13,2,4884,6276,6571,7210\n"
    )
    parsed = pa_tool.parse_csv(path)
    assert parsed["server_queue_ms"] == 1.493 and parsed["server_infer_ms"] == 2.476
    assert parsed["server_input_ms"] == 0.041 and parsed["server_output_ms"] == 0.013
    row = {"target": "gateway", "protocol": "grpc", "concurrency": 4, "runs": 1, **parsed}
    section = report.perf_analyzer_section({"rows": [row]})
    assert "server_queue_ms" in section and "| 1.49" in section and "statistics extension" in section


def test_closed_loop_asks_for_one_concurrency_and_open_loop_for_one_rate(tmp_path):
    tool = pa_tool.PerfAnalyzer(tmp_path / "perf_analyzer")
    closed = pa_tool.command(tool, "127.0.0.1:1", "resnet18", 64, tmp_path / "x.csv")
    assert closed[closed.index("--concurrency-range") + 1] == "64:64" and "-b" in closed
    assert closed[closed.index("-i") + 1] == "grpc" and closed[closed.index("-f") + 1] == str(
        tmp_path / "x.csv"
    )
    opened = pa_tool.command(tool, "127.0.0.1:1", "resnet18", 0, tmp_path / "x.csv", rate=250.0)
    assert (
        opened[opened.index("--request-rate-range") + 1] == "250:250" and "--concurrency-range" not in opened
    )
    # the open loop's calls are asynchronous (synchronous ones cap it at --max-threads in flight); the
    # closed loop keeps one synchronous client per concurrency, as Triton's own rows are measured
    assert "--async" in opened and "--async" not in closed


def test_the_open_loop_interleaves_the_servers_at_half_their_peaks_and_reports_what_was_delivered(
    monkeypatch,
):
    calls = []

    def fake_run(tool, url, model, concurrency, *, rate, probe=None, **kwargs):
        calls.append((url, rate))
        slow = url == "g" and len(calls) == 3  # one gateway run fell behind with a long tail
        p50 = 4.0 if url == "g" else 3.0
        sample = {
            "throughput_rps": rate * (0.5 if slow else 1.0),
            "p50_ms": p50,
            "p99_ms": p50 * (9 if slow else 2),
        }
        return sample | ({"connections": probe()} if probe is not None else {})

    monkeypatch.setattr(pa, "run_once", fake_run)
    rows = [
        {"target": "gateway", "concurrency": 64, "throughput_rps": 1000.0},
        {"target": "gateway", "concurrency": 1, "throughput_rps": 300.0},
        {"target": "triton", "concurrency": 64, "throughput_rps": 1100.0},
    ]
    opened = pa.open_loop_at_half_peak(
        None,
        {"gateway": "g", "triton": "t"},
        "m",
        rows,
        rounds=3,
        progress=lambda _: None,
        probes={"gateway": lambda: "1/0"},  # the gateway's workers' connections: one holds them all
    )
    assert calls[:4] == [("g", 500), ("t", 550), ("g", 500), ("t", 550)] and len(calls) == 6
    gateway = next(r for r in opened if r["target"] == "gateway")
    assert gateway["runs"] == 3 and gateway["rate_rps"] == 500
    assert gateway["p99_over_p50_runs"] == [2.0, 9.0, 2.0] and gateway["p99_over_p50"] == 2.0  # median
    assert gateway["delivered"] == pytest.approx(1.0)  # the median throughput over the offered rate
    assert gateway["delivered_runs"] == [1.0, 0.5, 1.0] and gateway["kept_runs"] == 2
    assert gateway["connections"] == "1/0, 1/0, 1/0"
    assert "connections" not in next(r for r in opened if r["target"] == "triton")
    text = report.perf_analyzer_section({"rows": [], "open": opened})
    assert "delivered" in text and "asynchronous" in text
    assert "| 1/0, 1/0, 1/0 |" in text  # each run's split, in the open loop's table


def test_the_binary_named_by_the_environment_is_used_with_its_cuda_runtime_path(tmp_path, monkeypatch):
    binary = tmp_path / "perf_analyzer"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "venv" / "perf-analyzer" / "nvidia" / "cuda_runtime" / "lib").mkdir(parents=True)
    monkeypatch.setenv(pa_tool.ENV_BINARY, str(binary))
    found = pa_tool.find_perf_analyzer(tmp_path / "venv")
    assert found is not None and found.binary == binary
    assert found.env()["LD_LIBRARY_PATH"].startswith(str(tmp_path / "venv" / "perf-analyzer"))


def test_a_missing_binary_is_reported_as_not_installed(tmp_path, monkeypatch):
    monkeypatch.delenv(pa_tool.ENV_BINARY, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert pa_tool.find_perf_analyzer(tmp_path / "venv") is None
    text = report.perf_analyzer_section({"skipped": f"perf_analyzer not installed; {pa_tool.INSTALL_HINT}"})
    assert "Not run" in text and "make perf-analyzer" in text


def test_interleaved_runs_visit_every_server_each_round_and_keep_medians(monkeypatch):
    calls = []

    def fake_run(tool, url, model, concurrency, **kwargs):
        calls.append((url, concurrency))
        return {"throughput_rps": 100.0 * len(calls), "p50_ms": 1.0}

    monkeypatch.setattr(pa, "run_once", fake_run)
    rows = pa.interleaved(
        None, {"gateway": "g", "triton": "t"}, "m", (1, 64), rounds=3, progress=lambda _: None
    )
    assert calls[:4] == [("g", 1), ("t", 1), ("g", 64), ("t", 64)] and len(calls) == 12
    gateway1 = next(r for r in rows if r["target"] == "gateway" and r["concurrency"] == 1)
    assert gateway1["runs"] == 3 and gateway1["throughput_rps"] == 500.0  # median of 100, 500, 900


def test_targets_compare_the_gateway_with_triton_and_onnxruntime_from_perf_analyzer_rows():
    rows = [
        {"target": "gateway", "concurrency": 1, "throughput_rps": 500.0, "p50_ms": 2.5},
        {"target": "triton", "concurrency": 1, "throughput_rps": 400.0, "p50_ms": 2.4},
        {"target": "gateway", "concurrency": 64, "throughput_rps": 900.0, "p50_ms": 60.0},
        {"target": "triton", "concurrency": 64, "throughput_rps": 1000.0, "p50_ms": 60.0},
    ]
    results = {
        "engines": [
            {"engine": "onnxruntime", "precision": "fp32", "batch": 1, "p50_ms": 2.0, "throughput_ips": 500.0}
        ],
        "servers": {
            "perf_analyzer": {"rows": rows, "open": [{"target": "gateway", "p50_ms": 4.0, "p99_ms": 6.0}]}
        },
    }
    by_name = {r["target"]: r for r in targets(results, "resnet18")}
    assert by_name["perf_analyzer gRPC c=1: gateway >= 1.0x Triton"]["measured"] == pytest.approx(1.25)
    assert by_name["perf_analyzer gRPC c=64: gateway >= 1.0x Triton"]["met"] == "no"
    assert by_name["perf_analyzer c=1 gateway p50 - ORT batch-1 p50 <= 1 ms"]["measured"] == pytest.approx(
        0.5
    )
    assert by_name["p99 <= 2x p50 at half of peak (gateway, open loop)"]["measured"] == pytest.approx(1.5)
    assert math.isnan(
        by_name["gateway c=64 >= 5x naive baseline (both over Kiln's HTTP client)"]["measured"]
    )  # no naive run here


def _servers(closed: list[tuple[str, str, int, float]], pa_c64_rps: float, pa_c64_p50_ms: float) -> dict:
    """The servers section: closed-loop rows (target, protocol, concurrency, requests/s) and the
    gateway's perf_analyzer row at c=64."""
    rows = [{"target": t, "protocol": p, "concurrency": c, "throughput_rps": r} for t, p, c, r in closed]
    gateway = {"target": "gateway", "concurrency": 64, "throughput_rps": pa_c64_rps, "p50_ms": pa_c64_p50_ms}
    return {"closed": rows, "perf_analyzer": {"rows": [gateway]}}


def _onnxruntime_at_batch_64(throughput_ips: float) -> list[dict]:
    """An engines table whose only row is ONNX Runtime at batch 64 (the c=64 ceiling's divisor)."""
    return [
        {
            "engine": "onnxruntime",
            "precision": "fp32",
            "batch": 64,
            "p50_ms": 9.0,
            "throughput_ips": throughput_ips,
        }
    ]


def test_the_gateway_c64_ceiling_row_takes_the_best_client_that_measured_it():
    """Kiln's Python generator shares the 2 cores with the gateway; perf_analyzer (C++) less so."""
    closed = [("gateway", "http", 64, 800.0), ("gateway", "grpc", 64, 900.0), ("triton", "grpc", 64, 1900.0)]
    results = {"engines": _onnxruntime_at_batch_64(2000.0), "servers": _servers(closed, 1200.0, 50.0)}
    by_name = {r["target"]: r for r in targets(results, "resnet18")}
    assert by_name["gateway c=64 (best client) >= 0.8x ORT best-batch direct"]["measured"] == pytest.approx(
        0.6
    )
    results["servers"]["perf_analyzer"] = {"skipped": "not installed"}
    by_name = {r["target"]: r for r in targets(results, "resnet18")}
    assert by_name["gateway c=64 (best client) >= 0.8x ORT best-batch direct"]["measured"] == pytest.approx(
        0.45
    )


def test_the_ceiling_is_onnxruntimes_best_layout_whichever_it_is():
    rows = [
        {"engine": "onnxruntime", "precision": "fp32", "batch": 64, "throughput_ips": 3200.0},
        {"engine": "onnxruntime x2", "precision": "fp32", "batch": 64, "throughput_ips": 3600.0},
        {"engine": "onnxruntime", "precision": "fp16", "batch": 64, "throughput_ips": 9000.0},
        {"engine": "pytorch", "precision": "fp32", "batch": 64, "throughput_ips": 9999.0},
    ]
    assert best_direct_throughput(rows) == 3600.0


def _one_round_at_64(monkeypatch, gateway_rps: float, triton_rps: float, **kwargs):
    """``interleaved`` over a fake gateway and Triton at c=64, one round, with ``kwargs``: its rows,
    and the keyword arguments each perf_analyzer run was given."""
    seen = []

    def fake_run(tool, url, model, concurrency, **given):
        seen.append(given)
        return {"throughput_rps": {"g": gateway_rps, "t": triton_rps}[url], "p50_ms": 1.0}

    monkeypatch.setattr(pa, "run_once", fake_run)
    targets = {"gateway": "g", "triton": "t"}
    return pa.interleaved(None, targets, "m", (64,), rounds=1, progress=lambda _: None, **kwargs), seen


def test_http_rows_carry_their_protocol_and_are_compared_with_triton_over_http_only(monkeypatch):
    http_rows, seen = _one_round_at_64(monkeypatch, 900.0, 600.0, protocol="http")
    assert [run["protocol"] for run in seen] == ["http", "http"] and {r["protocol"] for r in http_rows} == {
        "http"
    }
    grpc_rows = [
        {"target": "gateway", "protocol": "grpc", "concurrency": 64, "throughput_rps": 500.0, "p50_ms": 9.0},
        {"target": "triton", "protocol": "grpc", "concurrency": 64, "throughput_rps": 1000.0, "p50_ms": 9.0},
    ]
    results = {
        "engines": _onnxruntime_at_batch_64(1000.0),
        "servers": {"perf_analyzer": {"rows": grpc_rows + http_rows}},
    }
    by_name = {r["target"]: r for r in targets(results, "resnet18")}
    # against Triton: gRPC with gRPC (0.5), not the gateway's HTTP row against Triton's gRPC one
    assert by_name["perf_analyzer gRPC c=64: gateway >= 1.0x Triton"]["measured"] == pytest.approx(0.5)
    # the ceiling: the best client, whichever protocol it used
    assert by_name["gateway c=64 (best client) >= 0.8x ORT best-batch direct"]["measured"] == pytest.approx(
        0.9
    )
    text = report.perf_analyzer_section(results["servers"]["perf_analyzer"])
    lines = [line for line in text.splitlines() if line.startswith("| gateway")]
    assert lines == [
        "| gateway | grpc | 64 |  | 500.00 | 9.00 |  |  | 0.50 |  |  |  |  |  |",
        "| gateway | http | 64 | 1 | 900.00 | 1.00 |  |  | 1.50 |  |  |  |  |  |",
    ]


def test_the_naive_baseline_target_compares_the_gateway_and_naive_through_the_same_http_client():
    """perf_analyzer's gRPC figure is higher on a loaded machine; the naive server was never measured
    with it, so the ratio reads the gateway's own-client HTTP row."""
    closed = [
        ("gateway", "http", 64, 1000.0),
        ("gateway", "grpc", 64, 1500.0),
        ("gateway", "http", 1, 300.0),
        ("naive", "http", 64, 100.0),
    ]
    results = {"servers": _servers(closed, 2000.0, 30.0)}
    by_name = {r["target"]: r for r in targets(results, "resnet18")}
    assert by_name["gateway c=64 >= 5x naive baseline (both over Kiln's HTTP client)"]["measured"] == 10.0


def _open_runs(rate: float, runs: list[tuple[float, float]]) -> list[dict[str, float]]:
    """perf_analyzer open-loop samples of (throughput, p99/p50) with p50 at 8 ms."""
    return [{"throughput_rps": t, "p50_ms": 8.0, "p99_ms": 8.0 * q, "p99_over_p50": q} for t, q in runs]


def test_an_open_loop_run_that_fell_behind_its_rate_is_left_out_of_the_p99_target_and_shown():
    """The stored run: 751.6, 751.1 and 563.3 infer/s at 752 offered; the median ratio came from the
    run that delivered 0.75, while the row's median throughput read 1.00 delivered."""
    row = pa._open_row("gateway", 752, _open_runs(752, [(751.6, 2.54), (751.1, 1.81), (563.3, 2.0)]))
    assert row["delivered"] == pytest.approx(751.1 / 752) and row["delivered_runs"] == [1.0, 1.0, 0.75]
    assert row["kept_runs"] == 2 and row["p99_over_p50"] == pytest.approx((2.54 + 1.81) / 2)
    value, note = pa.open_loop_target(row)
    assert value == row["p99_over_p50"] and note == "1 of 3 runs left out: delivered [0.749]"
    results = {"servers": {"perf_analyzer": {"rows": [], "open": [row]}}}
    target = next(r for r in targets(results, "resnet18") if r["target"].startswith("p99 <= 2x p50"))
    assert target["met"] == "no" and "left out" in report.targets_table([target])
    assert "| [1.0, 1.0, 0.75] |" in report.perf_analyzer_section({"rows": [], "open": [row]})


def test_the_p99_target_is_not_measured_when_no_open_loop_run_kept_up_and_says_why():
    row = pa._open_row("gateway", 752, _open_runs(752, [(600.0, 1.5), (650.0, 1.4)]))
    results = {"servers": {"perf_analyzer": {"rows": [], "open": [row]}}}
    target = next(r for r in targets(results, "resnet18") if r["target"].startswith("p99 <= 2x p50"))
    assert math.isnan(target["measured"]) and target["met"] == "–"
    assert "no open-loop run delivered 0.95 of its offered rate" in report.targets_table([target])
    own = {"target": "gateway", "rate_rps": 500.0, "throughput_rps": 400.0, "p50_ms": 4.0, "p99_ms": 6.0}
    assert math.isnan(pa.open_loop_target(own)[0])  # Kiln's own single run, equally behind
    assert pa.open_loop_target({**own, "throughput_rps": 499.0}) == (1.5, "")


def test_stream_rows_run_with_streaming_and_are_compared_with_tritons_streams_only(tmp_path, monkeypatch):
    """perf_analyzer --streaming (gRPC ModelStreamInfer) rows: labelled ``grpc-stream``, set against
    Triton's stream rows, and never read by the targets against Triton (those are unary gRPC)."""
    tool = pa_tool.PerfAnalyzer(tmp_path / "perf_analyzer")
    assert "--streaming" in pa_tool.command(tool, "u", "m", 1, tmp_path / "x.csv", streaming=True)
    assert "--streaming" not in pa_tool.command(tool, "u", "m", 1, tmp_path / "x.csv")
    streamed, seen = _one_round_at_64(monkeypatch, 800.0, 400.0, streaming=True)
    assert [run["streaming"] for run in seen] == [True, True] and {r["protocol"] for r in streamed} == {
        pa.STREAM
    }
    grpc_rows = [
        {"target": "gateway", "protocol": "grpc", "concurrency": 64, "throughput_rps": 500.0, "p50_ms": 9.0},
        {"target": "triton", "protocol": "grpc", "concurrency": 64, "throughput_rps": 1000.0, "p50_ms": 9.0},
    ]
    results = {"servers": {"perf_analyzer": {"rows": grpc_rows + streamed}}}
    by_name = {r["target"]: r for r in targets(results, "resnet18")}
    assert by_name["perf_analyzer gRPC c=64: gateway >= 1.0x Triton"]["measured"] == pytest.approx(0.5)
    text = report.perf_analyzer_section(results["servers"]["perf_analyzer"])
    lines = [line for line in text.splitlines() if line.startswith("| gateway")]
    assert lines == [
        "| gateway | grpc | 64 |  | 500.00 | 9.00 |  |  | 0.50 |  |  |  |  |  |",
        "| gateway | grpc-stream | 64 | 1 | 800.00 | 1.00 |  |  | 2.00 |  |  |  |  |  |",
    ]


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (subprocess.TimeoutExpired(["perf_analyzer"], 90), "timed out"),
        (pa.ServerGone("the server at t ended (signal 11, SIGSEGV) during the run"), "SIGSEGV"),
    ],
)
def test_a_server_that_hangs_or_ends_a_run_is_not_run_again_and_its_failure_is_reported(
    monkeypatch, error, said
):
    """Triton 2.51 crashed under --streaming at c=64: perf_analyzer then hung to the timeout, or, with
    its process watched, stopped as it ended. That target is left out of the remaining rounds (not one
    more failure each) and the report says why."""
    calls = []

    def fake_run(tool, url, model, concurrency, **kwargs):
        calls.append((url, "alive" in kwargs))
        if url == "t":
            raise error
        return {"throughput_rps": 700.0, "p50_ms": 1.0}

    monkeypatch.setattr(pa, "run_once", fake_run)
    failures: dict[str, str] = {}
    rows = pa.interleaved(
        None,
        {"gateway": "g", "triton": "t"},
        "m",
        (1, 64),
        rounds=3,
        progress=lambda _: None,
        failures=failures,
        alive={"gateway": lambda: None, "triton": lambda: None},
        streaming=True,
    )
    assert calls.count(("t", True)) == 1 and calls.count(("g", True)) == 6
    assert [r["target"] for r in rows] == ["gateway", "gateway"] and said in failures["triton"]
    text = report.perf_analyzer_section({"rows": rows, "stream_failures": failures})
    assert "Streaming runs of `triton` failed" in text and "c=1 round 1" in text


def _fake_tool(tmp_path, body: str) -> pa_tool.PerfAnalyzer:
    """A perf_analyzer stand-in: a shell script running ``body`` (``$CSV``: the file ``-f`` names)."""
    binary = tmp_path / "perf_analyzer"
    script = '#!/bin/sh\nwhile [ "$#" -gt 0 ]; do [ "$1" = -f ] && CSV="$2"; shift; done\n' + body + "\n"
    binary.write_text(script)
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return pa_tool.PerfAnalyzer(binary)


def test_a_run_whose_server_ends_stops_at_once_naming_how_it_ended(tmp_path):
    """Triton 2.51 crashed under --streaming and perf_analyzer waited on the dead stream until the
    timeout (90 s a run). The run is watched: once the server's process has ended, perf_analyzer is
    stopped and the failure says how the server ended."""
    import time

    tool = _fake_tool(tmp_path, "exec sleep 600")
    server = subprocess.Popen(["sh", "-c", 'kill -SEGV "$$"'])
    server.wait()
    started = time.monotonic()
    with pytest.raises(pa.ServerGone, match="SIGSEGV"):
        pa.run_once(
            tool, "u", "m", 64, timeout_s=300, alive=server_watch.process_watch(server), streaming=True
        )
    assert time.monotonic() - started < 60, "not waited out to the timeout"

    live = subprocess.Popen(["sleep", "600"])
    try:
        assert server_watch.process_watch(live)() is None
    finally:
        live.kill()
        live.wait()
    assert server_watch.process_watch(live)() == "ended (signal 9, SIGKILL)"
    assert server_watch.process_watch(None)() == "is not running"


def test_a_watched_run_that_finishes_is_read_and_a_hung_one_still_times_out(tmp_path):
    header = "Concurrency,Inferences/Second,p50 latency,p99 latency"
    tool = _fake_tool(tmp_path, f'printf "{header}\\n64,1500.5,2000,5000\\n" > "$CSV"')
    sample = pa.run_once(tool, "u", "m", 64, alive=lambda: None)
    assert sample["throughput_rps"] == 1500.5 and sample["p50_ms"] == 2.0 and sample["p99_ms"] == 5.0

    hung = _fake_tool(tmp_path, "exec sleep 600")
    with pytest.raises(subprocess.TimeoutExpired):
        pa.run_once(hung, "u", "m", 64, timeout_s=0.5, alive=lambda: None)

    failing = _fake_tool(tmp_path, "echo 'error: no such model'; exit 3")
    with pytest.raises(RuntimeError, match="exit 3.*no such model"):
        pa.run_once(failing, "u", "m", 64)


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").is_file(), reason="needs Linux's procfs smaps_rollup")
def test_a_servers_memory_counts_every_process_under_it_and_shared_pages_once(tmp_path):
    import os

    alone = server_watch.tree_memory_mib(os.getpid())
    assert alone is not None and alone["pss_mib"] > 0
    child = subprocess.Popen(["sleep", "600"])
    try:
        with_child = server_watch.tree_memory_mib(os.getpid())
        assert with_child is not None and with_child["processes"] == alone["processes"] + 1
    finally:
        child.kill()
        child.wait()
    assert server_watch.tree_memory_mib(child.pid) is None and server_watch.tree_memory_mib(None) is None
    text = report.perf_analyzer_section(
        {
            "rows": [{"target": "gateway", "concurrency": 1, "throughput_rps": 900.0, "p50_ms": 1.0}],
            "memory": {"gateway": {"pss_mib": 438.9, "processes": 3}},
        }
    )
    assert "`gateway` 439 MiB (3 processes)" in text


def test_each_run_reads_the_gateway_s_connection_split_once_and_the_row_lists_them(tmp_path, monkeypatch):
    """How the gateway's workers held a run's connections (they hand new ones to the one holding
    fewest) is read once, 1.5 s into each run, and listed run by run in the row and the report."""
    import http.server
    import threading

    page = (
        b"# TYPE kiln_open_connections gauge\n"
        b'kiln_open_connections{pid="1",protocol="grpc"} 5.0\n'
        b'kiln_open_connections{pid="2",protocol="grpc"} 6.0\n'
        b'kiln_open_connections{pid="1",protocol="http"} 1.0\n'
    )

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        assert server_watch.connection_split(url, "grpc")() == "6/5"
        assert server_watch.connection_split(url, "http")() == "1"
        header = "Concurrency,Inferences/Second,p50 latency,p99 latency"
        # each run lasts until its probe was asked (at most 30 s), however late a busy machine asks it
        probed = tmp_path / "probed"
        wait = f'i=0; while [ ! -e "{probed}" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; rm -f "{probed}"'
        tool = _fake_tool(tmp_path, f'{wait}; printf "{header}\\n64,1500.5,2000,5000\\n" > "$CSV"')
        asked = []

        def probe():
            asked.append(1)
            probed.touch()
            return server_watch.connection_split(url, "grpc")()

        monkeypatch.setattr(pa, "PROBE_AFTER_S", 0.3)  # a shorter run; the probe is still asked once
        rows = pa.interleaved(tool, {"gateway": "u"}, "m", [64], rounds=2, probes={"gateway": probe})
        monkeypatch.undo()
        assert len(asked) == 2 and rows[0]["connections"] == "6/5, 6/5"
        assert rows[0]["throughput_rps"] == 1500.5  # the split is no median
        text = report.perf_analyzer_section({"rows": rows})
        assert "| 6/5, 6/5 |" in text and "`connections`:" in text
    finally:
        server.shutdown()
        server.server_close()
    assert server_watch.connection_split(url, "grpc")() is None  # nothing listens now: no split, no failure
    quick = _fake_tool(tmp_path, f'printf "{header}\\n64,1500.5,2000,5000\\n" > "$CSV"')
    assert "connections" not in pa.run_once(quick, "u", "m", 64, probe=lambda: "never asked")
