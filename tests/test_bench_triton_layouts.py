"""Triton measured at two layouts: which runs, which one the targets divide by, and a failed layout.

Fakes only: no Triton, no perf_analyzer, nothing timed.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest

from bench import perf_analyzer as pa
from bench import report, triton_layouts
from bench.targets import targets
from bench.triton_layouts import TRITON, start_layouts

SPLIT = "triton (2 instances x 1 thread)"
C1 = "perf_analyzer gRPC c=1: gateway >= 1.0x Triton"
C64 = "perf_analyzer gRPC c=64: gateway >= 1.0x Triton"
LAYOUTS = {TRITON: "1 instance x 2 threads", SPLIT: "2 instances x 1 thread"}


def _row(target: str, concurrency: int, rps: float, protocol: str = "grpc") -> dict:
    return {"target": target, "protocol": protocol, "concurrency": concurrency, "throughput_rps": rps}


def _by_name(pa_result: dict) -> dict[str, dict]:
    return {r["target"]: r for r in targets({"servers": {"perf_analyzer": pa_result}}, "resnet18")}


def test_two_threads_give_the_exported_layout_and_one_single_thread_instance_per_thread():
    assert [(x.name, x.instances, x.threads, x.describe()) for x in triton_layouts.triton_layouts(2)] == [
        (TRITON, 1, 2, "1 instance x 2 threads"),
        (SPLIT, 2, 1, "2 instances x 1 thread"),
    ]
    assert [x.name for x in triton_layouts.triton_layouts(1)] == [TRITON]  # the two coincide


def test_the_extra_layout_is_interleaved_at_the_target_concurrencies_only(monkeypatch):
    calls = []

    def fake_run(tool, url, model, concurrency, **kwargs):
        calls.append((url, concurrency))
        return {"throughput_rps": 100.0, "p50_ms": 1.0}

    monkeypatch.setattr(pa, "run_once", fake_run)
    urls = {"gateway": "g", TRITON: "t", SPLIT: "s"}
    rows = pa.interleaved(
        None, urls, "m", (1, 8, 64), rounds=2, progress=lambda _: None, only={SPLIT: (1, 64)}
    )
    one_round = [("g", 1), ("t", 1), ("s", 1), ("g", 8), ("t", 8), ("g", 64), ("t", 64), ("s", 64)]
    assert calls == one_round * 2
    assert {(r["target"], r["concurrency"]) for r in rows if r["target"] == SPLIT} == {
        (SPLIT, 1),
        (SPLIT, 64),
    }


def test_each_target_divides_by_the_better_triton_layout_at_its_concurrency_and_names_it():
    rows = [
        _row("gateway", 1, 900.0),
        _row(TRITON, 1, 800.0),
        _row(SPLIT, 1, 600.0),
        _row("gateway", 64, 1500.0),
        _row(TRITON, 64, 1000.0),
        _row(SPLIT, 64, 2000.0),
        _row(TRITON, 64, 5000.0, protocol="http"),  # another protocol: never the divisor
    ]
    by_name = _by_name({"rows": rows, "triton_layouts": LAYOUTS, "layout_failures": {}})
    assert by_name[C1]["measured"] == pytest.approx(900 / 800) and by_name[C1]["met"] == "yes"
    assert by_name[C1]["note"] == (
        "against the better Triton layout, triton [1 instance x 2 threads] at 800/s "
        "(also measured: triton (2 instances x 1 thread) [2 instances x 1 thread] 600/s)"
    )
    assert by_name[C64]["measured"] == pytest.approx(0.75) and by_name[C64]["met"] == "no"
    assert by_name[C64]["note"].startswith(
        f"against the better Triton layout, {SPLIT} [2 instances x 1 thread]"
    )


def _export_layout_rows() -> list[dict]:
    """The gateway and Triton at the export's layout, at both target concurrencies."""
    return [
        _row("gateway", 1, 900.0),
        _row(TRITON, 1, 800.0),
        _row("gateway", 64, 1500.0),
        _row(TRITON, 64, 1000.0),
    ]


def test_a_layout_that_failed_to_start_leaves_the_other_as_divisor_with_a_note():
    rows = _export_layout_rows()
    failures = {SPLIT: "tritonserver exited with code 1 before it was ready"}
    by_name = _by_name({"rows": rows, "triton_layouts": LAYOUTS, "layout_failures": failures})
    assert by_name[C64]["measured"] == pytest.approx(1.5)
    assert by_name[C64]["note"].endswith(
        f"not measured, left out: {SPLIT} [2 instances x 1 thread]: tritonserver exited with code 1 before "
        "it was ready"
    )


def test_a_layout_whose_runs_all_failed_at_one_concurrency_is_named_there_only():
    rows = _export_layout_rows()
    rows.append(_row(SPLIT, 1, 850.0))
    by_name = _by_name({"rows": rows, "triton_layouts": LAYOUTS, "layout_failures": {}})
    assert by_name[C1]["measured"] == pytest.approx(900 / 850) and "left out" not in by_name[C1]["note"]
    assert by_name[C64]["note"].endswith(f"{SPLIT} [2 instances x 1 thread]: no run at this concurrency")


def test_results_from_before_the_layouts_compare_with_their_one_triton_row():
    rows = [
        {"target": "gateway", "concurrency": 64, "throughput_rps": 900.0},
        {"target": TRITON, "concurrency": 64, "throughput_rps": 1000.0},
    ]
    by_name = _by_name({"rows": rows})
    assert by_name[C64]["measured"] == pytest.approx(0.9) and by_name[C64]["note"] == (
        "against the better Triton layout, triton at 1000/s"
    )
    assert by_name[C1]["met"] == "–" and "note" not in by_name[C1]


def test_the_report_divides_by_the_better_layout_and_says_which():
    rows = [_row("gateway", 64, 1500.0), _row(TRITON, 64, 1000.0), _row(SPLIT, 64, 2000.0)]
    rows += [_row("gateway", 64, 900.0, "http"), _row(TRITON, 64, 600.0, "http")]
    text = report.perf_analyzer_section({"rows": rows, "triton_layouts": LAYOUTS, "layout_failures": {}})
    x_triton = {(r["target"], r["protocol"]): r["x_triton"] for r in rows}
    assert x_triton[("gateway", "grpc")] == pytest.approx(0.75) and x_triton[("gateway", "http")] == 1.5
    assert x_triton[(TRITON, "grpc")] == pytest.approx(0.5)
    assert f"grpc c=64 `{SPLIT}`, http c=64 `triton`" in text


class FakeTriton:
    """A TritonServer stand-in whose start fails for the layouts named in ``FAILING``."""

    FAILING: set[int] = set()
    started: list[tuple[int, int]] = []

    def __init__(
        self, repository: Path, workdir: Path, *, threads: int, instances: int, keep_repository: bool = True
    ) -> None:
        self.layout = (instances, threads)
        self.grpc_url = f"grpc-{instances}x{threads}"

    def __enter__(self) -> FakeTriton:
        from serving.triton.server import TritonError

        if self.layout in self.FAILING:
            raise TritonError("tritonserver exited with code 1 before it was ready\n--- log tail ---")
        FakeTriton.started.append(self.layout)
        return self

    def __exit__(self, *exc: object) -> None:
        FakeTriton.started.remove(self.layout)


def test_a_failed_extra_layout_is_recorded_and_the_first_keeps_running(monkeypatch, tmp_path):
    import serving.triton

    monkeypatch.setattr(serving.triton, "TritonServer", FakeTriton)
    monkeypatch.setattr(FakeTriton, "FAILING", {(2, 1)})
    layouts = triton_layouts.triton_layouts(2)
    with ExitStack() as stack, ExitStack() as extra:
        started, failed = start_layouts(stack, extra, tmp_path, tmp_path, layouts, progress=lambda _: None)
        assert list(started) == [TRITON] and FakeTriton.started == [(1, 2)]
        assert failed == {SPLIT: "tritonserver exited with code 1 before it was ready"}
    assert FakeTriton.started == []


def test_the_extra_layout_stops_with_its_own_stack_and_the_first_with_the_bench(monkeypatch, tmp_path):
    import serving.triton

    monkeypatch.setattr(serving.triton, "TritonServer", FakeTriton)
    monkeypatch.setattr(FakeTriton, "FAILING", set())
    with ExitStack() as stack:
        extra = stack.enter_context(ExitStack())
        started, failed = start_layouts(
            stack, extra, tmp_path, tmp_path, triton_layouts.triton_layouts(2), progress=lambda _: None
        )
        assert {n: s.grpc_url for n, s in started.items()} == {TRITON: "grpc-1x2", SPLIT: "grpc-2x1"}
        extra.close()
        assert FakeTriton.started == [(1, 2)] and failed == {}
    assert FakeTriton.started == []


def test_a_first_layout_that_fails_to_start_still_stops_the_bench(monkeypatch, tmp_path):
    import serving.triton
    from serving.triton.server import TritonError

    monkeypatch.setattr(serving.triton, "TritonServer", FakeTriton)
    monkeypatch.setattr(FakeTriton, "FAILING", {(1, 2)})
    with ExitStack() as stack, ExitStack() as extra, pytest.raises(TritonError):
        start_layouts(
            stack, extra, tmp_path, tmp_path, triton_layouts.triton_layouts(2), progress=lambda _: None
        )
