"""The benchmark's machinery: statistics, load generators, engine runs, the report, classify identity.

Speed is never asserted here; these tests prove the numbers are computed from what really happened.
"""

from __future__ import annotations

import asyncio
import json
import math
import selectors
import threading
from collections.abc import Coroutine
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from bench import engines, load, report
from bench.stats import ratio, summarize, time_calls


def test_summarize_reports_percentiles_in_milliseconds():
    stats = summarize([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert stats.n == 100
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.max_ms == pytest.approx(100.0)
    assert math.isnan(summarize([]).p50_ms)


def test_time_calls_stops_at_the_call_limit_and_ratio_guards_missing_values():
    calls = []
    latencies = time_calls(lambda: calls.append(1), warmup=2, max_calls=7, budget_s=10)
    assert len(latencies) == 7 and len(calls) == 9
    assert math.isnan(ratio(1.0, 0.0)) and ratio(3.0, 2.0) == 1.5


class _SkippingSelector(selectors.DefaultSelector):
    """Polls without blocking; a wait with a timeout moves the loop's clock on instead of sleeping."""

    def __init__(self, loop: _VirtualTimeLoop) -> None:
        super().__init__()
        self.loop = loop

    def select(self, timeout: float | None = None) -> list:
        if timeout is None:  # nothing scheduled: only I/O can wake the loop
            return super().select(None)
        ready = super().select(0)
        if not ready:
            self.loop.now += timeout
        return ready


class _VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when every task waits on a timer: a send that sleeps 200 ms
    takes exactly 200 ms of its time however busy the machine, so counts over a window are exact."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_SkippingSelector(self))

    def time(self) -> float:
        return self.now


def _in_virtual_time(monkeypatch, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on a virtual-time loop, with ``bench.load`` reading that loop's clock."""
    loop = _VirtualTimeLoop()
    monkeypatch.setattr(load, "time", SimpleNamespace(perf_counter=loop.time))
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_a_virtual_time_loop_moves_its_clock_by_the_timers_alone():
    async def two_sleepers() -> float:
        loop = asyncio.get_running_loop()
        await asyncio.gather(asyncio.sleep(0.2), asyncio.sleep(0.5))
        return loop.time()

    loop = _VirtualTimeLoop()
    try:
        assert loop.run_until_complete(two_sleepers()) == pytest.approx(0.5, abs=1e-9)
    finally:
        loop.close()


def test_closed_loop_keeps_exactly_the_requested_number_of_requests_in_flight(monkeypatch):
    state = {"now": 0, "peak": 0, "n": 0}

    async def send() -> bool:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.002)
        state["now"] -= 1
        state["n"] += 1
        return state["n"] % 5 != 0  # every fifth request fails

    result = _in_virtual_time(
        monkeypatch, load.closed_loop(send, concurrency=4, duration_s=0.3, warmup_s=0.05)
    )
    assert state["peak"] == 4
    assert result.ok + result.errors == pytest.approx(4 * 0.3 / 0.002, abs=4)  # every reply in the window
    assert result.ok > 0 and result.errors > 0
    assert result.errors == pytest.approx((result.ok + result.errors) / 5, abs=4)
    assert len(result.latencies_s) == result.ok
    assert result.as_dict()["throughput_rps"] == pytest.approx(result.ok / result.duration_s)


def test_open_loop_sends_at_the_fixed_rate_and_counts_raised_errors():
    async def send() -> bool:
        await asyncio.sleep(0.001)
        raise ConnectionError("server gone")

    result = asyncio.run(load.open_loop(send, rate_rps=200, duration_s=0.25))
    assert result.ok == 0 and result.errors == 50


def test_report_writes_json_markdown_with_ratios_and_plots(tmp_path):
    engines_rows = [
        {
            "engine": "pytorch",
            "precision": "fp32",
            "batch": 1,
            "p50_ms": 4.0,
            "p90_ms": 5,
            "p99_ms": 6,
            "throughput_ips": 250.0,
            "peak_rss_mib": 300,
        },
        {
            "engine": "onnxruntime",
            "precision": "fp32",
            "batch": 1,
            "p50_ms": 1.0,
            "p90_ms": 1,
            "p99_ms": 2,
            "throughput_ips": 1000.0,
            "peak_rss_mib": 100,
        },
    ]
    closed = [
        {
            "target": t,
            "protocol": "http",
            "concurrency": c,
            "throughput_rps": rps,
            "p50_ms": 1.0,
            "p90_ms": 2.0,
            "p99_ms": 3.0,
            "max_ms": 4.0,
            "errors": 0,
        }
        for t, rps in (("gateway", 800.0), ("naive", 100.0))
        for c in (1, 64)
    ]
    results = {
        "engines": engines_rows,
        "servers": {"closed": closed, "open": [], "batch_histogram": {"1.0": 3, "8.0": 10, "+Inf": 10}},
    }
    text = report.engine_section(engines_rows)
    assert "| onnxruntime | fp32 | 1 | 1.00 |" in text and "4.00" in text  # speedup 4x over pytorch
    servers_md = report.server_section(results["servers"], best_direct_ips=1000.0)
    assert "| gateway | http | 64 | 800.00 |" in servers_md and "| 8.00 | 0.80 |" in servers_md
    report.write_results(results, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["engines"][1]["engine"] == "onnxruntime"
    pngs = report.plots(results, tmp_path)
    assert {p.name for p in pngs} == {"servers.png", "batch_sizes.png", "engines.png"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_grpc_load_spreads_over_connections_of_its_own_taken_in_turn():
    """A channel is one connection, and a gateway worker takes whole connections: the load client's
    channels must not share one (gRPC pools subchannels globally) and its requests rotate over them."""
    import grpc

    from bench.servers import grpc_channels

    peers: list[str] = []

    async def infer(request: bytes, context) -> bytes:
        peers.append(context.peer())  # "ipv4:127.0.0.1:<the client's port>": one per connection
        return b""

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "inference.GRPCInferenceService",
                    {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)},
                )
            ]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            from tritonclient.grpc import service_pb2_grpc

            images = np.zeros((1, 4, 4, 1), dtype=np.uint8)
            for count in (3, 1):
                channels = grpc_channels(f"127.0.0.1:{port}", count)
                stubs = [service_pb2_grpc.GRPCInferenceServiceStub(c) for c in channels]
                send = load.kserve_grpc_sender(stubs, "m", images)
                for _ in range(2 * count):
                    assert await send()
                for channel in channels:
                    await channel.close()
        finally:
            await server.stop(None)

    asyncio.run(main())
    three, one = peers[:6], peers[6:]
    assert len(set(three)) == 3 and three[:3] == three[3:]  # three connections, in turn
    assert len(set(one)) == 1 and len(one) == 2


def test_the_speed_probe_measures_a_product_and_a_copy_on_this_machine():
    from bench.machine import speed_probe

    speed = speed_probe(budget_s=0.02)
    assert set(speed) == {"product_gflops", "copy_gbps"}
    assert all(math.isfinite(v) and v > 0 for v in speed.values())


def test_cpu_caches_reads_the_data_and_unified_caches_of_cpu0_from_sysfs(tmp_path):
    from bench.machine import cpu_caches, describe_cpu

    for index, (level, kind, size) in enumerate(
        [
            ("1", "Data", "48K"),
            ("1", "Instruction", "32K"),
            ("2", "Unified", "2048K"),
            ("3", "Unified", "107520K"),
        ]
    ):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(value + "\n")
    caches = cpu_caches(tmp_path)
    assert caches == {"L1d": "48 KiB", "L2": "2 MiB", "L3": "105 MiB"}  # the instruction cache left out
    assert cpu_caches(tmp_path / "missing") == {}
    (tmp_path / "index0" / "size").unlink()
    assert cpu_caches(tmp_path) == {}  # an unreadable entry: nothing rather than half
    assert (
        describe_cpu({"cpu": "Xeon", "cpu_flags": [], "caches": caches})
        == "Xeon (L1d 48 KiB, L2 2 MiB, L3 105 MiB)"
    )
    assert describe_cpu({"cpu": "Xeon"}) == "Xeon"  # results written before the probe existed


def test_steal_share_is_the_hosts_part_of_the_cpu_time_between_two_readings():
    from bench.machine import cpu_ticks, steal_share

    #         user nice sys idle iowait irq softirq steal guest guest_nice
    before = [100, 0, 50, 800, 0, 0, 0, 50, 40, 0]
    after = [200, 0, 100, 1600, 0, 0, 0, 150, 90, 0]  # 1 050 ticks spent, 100 of them stolen
    assert steal_share(before, after) == pytest.approx(9.52, abs=0.01)
    assert steal_share(before, before) is None  # no time passed
    assert steal_share(None, after) is None and steal_share(before[:4], after[:4]) is None
    ticks = cpu_ticks()
    if ticks is not None:  # Linux: the counters only grow
        assert len(ticks) >= 8 and all(b >= a for a, b in zip(ticks, cpu_ticks(), strict=False))


def test_the_report_prints_the_machines_speed_at_the_start_and_end_of_the_run(tmp_path):
    from bench.__main__ import write
    from bench.machine import speed_line

    machine = {
        "cpu": "AMD EPYC",
        "cpu_flags": ["avx2", "avx512f"],
        "caches": {"L1d": "32 KiB", "L2": "1 MiB", "L3": "32 MiB"},
        "usable_cores": 2,
        "memory_gib": 23.5,
        "gpu": None,
        "libraries": {"numpy": "2"},
        "speed": {
            "start": {"product_gflops": 94.6, "copy_gbps": 18.2},
            "end": {"product_gflops": 90.1, "copy_gbps": 12.5},
        },
        "steal_pct": 3.5,
    }
    write({"profile": "quick", "machine": machine, "threads": 2, "targets": []}, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "Machine: AMD EPYC (avx2, avx512f, L1d 32 KiB, L2 1 MiB, L3 32 MiB), 2 usable cores" in text
    assert "product 94.6 → 90.1 GFLOP/s, 64 MiB copy 18.2 → 12.5 GB/s" in text
    assert "other guests during the run: 3.5 %" in text
    only_start = {"speed": {"start": {"product_gflops": 94.6, "copy_gbps": 18.2}}}
    line = speed_line(only_start)
    assert "at the start of the run: float32 product 94.6 GFLOP/s, 64 MiB copy 18.2 GB/s." in line
    assert speed_line({}) == ""  # results written before the probe existed


def test_engine_jobs_measure_pytorch_and_onnxruntime_on_the_exported_entry(tmp_path):
    from tests.repo_fixtures import build_classifier_repository

    repo = build_classifier_repository(tmp_path / "repo", ("lenet",))
    jobs = engines.classifier_jobs(repo, tmp_path, "lenet", (1, 4), threads=1, budget_s=0.2)
    assert [j.engine for j in jobs] == ["pytorch", "onnxruntime"]
    rows = engines.run_jobs(jobs)
    assert [(r["engine"], r["batch"]) for r in rows] == [
        ("pytorch", 1),
        ("pytorch", 4),
        ("onnxruntime", 1),
        ("onnxruntime", 4),
    ]
    assert all(r["p50_ms"] > 0 and r["peak_rss_mib"] > 0 and r["throughput_ips"] > 0 for r in rows)


def test_with_two_threads_onnxruntime_is_also_measured_as_two_single_thread_sessions_at_once(tmp_path):
    """The gateway runs one single-thread session per worker; its ceiling is ORT's best layout."""
    from tests.repo_fixtures import build_classifier_repository

    repo = build_classifier_repository(tmp_path / "repo", ("lenet",))
    jobs = engines.classifier_jobs(repo, tmp_path, "lenet", (4,), threads=2, budget_s=0.2)
    assert [(j.label, j.threads, j.sessions) for j in jobs] == [
        ("pytorch", 2, 1),
        ("onnxruntime", 2, 1),
        ("onnxruntime x2", 1, 2),
    ]
    rows = engines.run_jobs(jobs[2:])
    assert [(r["engine"], r["batch"], r["threads"], r["sessions"]) for r in rows] == [
        ("onnxruntime x2", 4, 1, 2)
    ]
    assert rows[0]["throughput_ips"] > 0 and rows[0]["p50_ms"] > 0


def test_concurrent_calls_count_every_call_of_every_session_over_the_wall_time(monkeypatch):
    """Two sessions whose calls meet (a barrier: run one after the other, they would never meet) and
    take 2 ms of a clock they move themselves: every call is counted, over the time they took."""
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(engines, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    meet = threading.Barrier(2, timeout=30)  # a failure bound: sessions run in turn break it
    calls = []

    def session():
        made = []

        def run(images):
            calls.append(images.shape[0])
            made.append(images.shape[0])
            if len(made) == 1:  # the warm-up call, made alone from the calling thread
                return
            if meet.wait() == 0:  # both sessions in a call: one moves the clock 2 ms on
                clock.now += 0.002
            meet.wait()  # neither reads the clock before it has moved

        return run

    latencies, throughput = engines._concurrent_calls(
        [session(), session()], np.zeros((8, 1)), budget_s=0.1, warmup=1
    )
    timed = len(calls) - 2  # less the warm-up calls
    assert timed == len(latencies) and timed == pytest.approx(2 * 0.1 / 0.002, abs=2)
    assert latencies == pytest.approx([0.002] * timed)
    assert throughput == pytest.approx(2 * 8 / 0.002)  # both sessions' images over the time they took


def test_classify_identity_counts_an_answer_identical_only_when_every_output_matches_bit_for_bit():
    from bench import classify_identity

    want = [
        {"logits": np.array([[1.0, 2.0]], np.float32), "probabilities": np.array([[0.3, 0.7]], np.float32)}
    ] * 3
    got = [
        {"logits": np.array([1.0, 2.0], np.float32), "probabilities": np.array([0.3, 0.7], np.float32)},
        {
            "logits": np.array([1.0, 2.0 + 1e-6], np.float32),
            "probabilities": np.array([0.3, 0.7], np.float32),
        },
        {"logits": np.array([1.0, 2.0], np.float32), "probabilities": np.array([0.3, 0.5], np.float32)},
    ]
    result = classify_identity.compare(got, want)
    assert (result["sent"], result["identical"]) == (3, 1)
    assert result["same_top1"] == 3  # close answers (a GPU's) still rank the same class first
    assert result["max_abs_diff"] == pytest.approx(0.2, abs=1e-6)
    flipped = [
        {"logits": np.array([2.0, 1.0], np.float32), "probabilities": np.array([0.7, 0.3], np.float32)}
    ]
    assert classify_identity.compare(flipped, want[:1])["same_top1"] == 0
    both = {"alone": result, "under_load": {"sent": 1, "identical": 1, "max_abs_diff": 0.0}}
    assert classify_identity.identical_percent(both) == 50.0
    assert np.isnan(classify_identity.identical_percent({}))


def test_a_target_measured_just_past_its_goal_prints_enough_digits_not_to_read_as_the_goal():
    rows = [
        {"target": "p99 <= 2x p50", "goal": 2.0, "measured": 2.00289, "met": "no"},
        {"target": "ratio >= 5x", "goal": 5.0, "measured": 16.0, "met": "yes"},
        {"target": "exactly met", "goal": 1.0, "measured": 1.0, "met": "yes"},
        {"target": "not run", "goal": 1.0, "measured": math.nan, "met": "–"},
    ]
    text = report.targets_table(rows)
    assert "| p99 <= 2x p50 | 2.00 | 2.003 | no |" in text
    assert "| ratio >= 5x | 5.00 | 16.00 | yes |" in text and "| exactly met | 1.00 | 1.00 | yes |" in text
    assert "| not run | 1.00 | – | – |" in text
    assert report.measured_text(1.99999, 2.0) == "1.99999" and report.measured_text(0.4999, 0.5) == "0.4999"


def test_closed_loop_throughput_is_the_replies_inside_the_window_over_the_window_not_the_last_reply(
    monkeypatch,
):
    """8 clients of a 200 ms server complete 40 requests a second; dividing the requests started in a
    1 s window by the time until the last reply (1.1 s) would read 36."""

    async def send() -> bool:
        await asyncio.sleep(0.2)
        return True

    result = _in_virtual_time(
        monkeypatch, load.closed_loop(send, concurrency=8, duration_s=1.0, warmup_s=0.1)
    )
    assert result.duration_s == 1.0
    assert (result.ok, result.errors) == (40, 0)  # replies at 0.2 .. 1.0 s; those at 1.2 s are out
    assert result.as_dict()["throughput_rps"] == pytest.approx(40)


def test_a_spawned_engine_reports_its_own_peak_memory_not_the_parent_that_touched_more():
    """ru_maxrss survives fork and exec, so each engine process read the parent's peak (366.69 MiB on
    every row); VmHWM starts afresh with the child's own image."""
    import multiprocessing as mp

    touched = np.ones(400 * 2**20, dtype=np.uint8)  # 400 MiB resident in this process
    parent = engines.peak_rss_mib()
    with mp.get_context("spawn").Pool(1) as pool:
        child = pool.apply(engines.peak_rss_mib)
    del touched
    assert parent >= 400 and child < parent / 2


def test_results_json_keeps_the_ratios_the_report_derives_for_its_tables(tmp_path):
    from bench.__main__ import write

    machine = {"cpu": "x", "usable_cores": 2, "memory_gib": 1, "gpu": None, "libraries": {}}
    row = {"protocol": "http", "concurrency": 64, "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 2.0}
    closed = [
        {**row, "target": "gateway", "throughput_rps": 800.0},
        {**row, "target": "naive", "throughput_rps": 100.0},
    ]
    opened = [{**row, "target": "gateway", "rate_rps": 400.0, "throughput_rps": 400.0, "errors": 0}]
    engines_rows = [
        {"engine": e, "precision": "fp32", "batch": 1, "p50_ms": p50, "throughput_ips": 1000.0 / p50}
        for e, p50 in (("pytorch", 4.0), ("onnxruntime", 1.0))
    ]
    results = {"profile": "quick", "machine": machine, "threads": 2, "targets": [], "engines": engines_rows}
    results["servers"] = {"closed": closed, "open": opened}
    write(results, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (
        saved["servers"]["closed"][0]["x_naive"] == 8.0 and saved["servers"]["open"][0]["p99_over_p50"] == 2.0
    )
    assert saved["engines"][1]["speedup_vs_pytorch_p50"] == 4.0
