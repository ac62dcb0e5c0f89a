"""The bench's figures and failures as a user running it meets them: an engine or server that fails is
reported beside the rest, flags that cannot apply are refused before anything runs, and every count
means what its column says. Speed is never asserted here."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import numpy as np
import pytest

from bench import engines, load, servers

MACHINE = {"cpu": "x", "usable_cores": 2, "memory_gib": 1, "gpu": None, "libraries": {}}


def _engine_row(engine: str, p50: float) -> dict:
    return {"engine": engine, "precision": "fp32", "batch": 1, "p50_ms": p50, "throughput_ips": 1e3 / p50}


def test_an_onnxruntime_engine_that_failed_leaves_the_ceiling_to_the_others_and_the_report_names_it(
    tmp_path,
):
    """A failed engine's row holds its error, no throughput: the report used to stop on it with a
    KeyError after every part had been measured, and nothing was written."""
    from bench.__main__ import write
    from bench.targets import best_direct_throughput

    failed = {"engine": "onnxruntime x2", "precision": "fp32", "error": "session died"}
    rows = [_engine_row("pytorch", 4.0), _engine_row("onnxruntime", 1.0), failed]
    assert best_direct_throughput(rows) == 1000.0
    latency = {"p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 2.0, "max_ms": 3.0, "errors": 0}
    closed = [
        {"target": "gateway", "protocol": "http", "concurrency": 64, "throughput_rps": 800.0, **latency}
    ]
    results = {"profile": "quick", "machine": MACHINE, "threads": 2, "targets": [], "engines": rows}
    results["servers"] = {"closed": closed, "open": []}
    write(results, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "- onnxruntime x2 fp32: session died" in text
    assert (
        json.loads((tmp_path / "results.json").read_text())["servers"]["closed"][0]["x_ort_best_batch"] == 0.8
    )


def test_a_failed_engine_is_named_with_its_layout(monkeypatch):
    """Two ONNX Runtime fp32 jobs differ by layout only; the failure names the one that failed."""

    class _Pool:
        def __init__(self, *_, **__):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *_):
            return False

        def apply(self, *_):
            raise RuntimeError("out of memory")

    monkeypatch.setattr(engines.mp, "get_context", lambda _: SimpleNamespace(Pool=_Pool))
    job = engines.EngineJob("onnxruntime", "fp32", "m.onnx", (8, 8, 1), (1,), 1, 0.1, sessions=2)
    assert engines.run_jobs([job], progress=lambda _: None) == [
        {"engine": "onnxruntime x2", "precision": "fp32", "error": "out of memory"}
    ]


def test_the_open_loop_refuses_a_rate_of_zero_with_a_clear_error():
    async def send() -> bool:
        return True

    with pytest.raises(ValueError, match="rate above 0"):
        asyncio.run(load.open_loop(send, rate_rps=0.0, duration_s=1.0))


def test_a_gateway_that_answered_nothing_skips_its_open_loop_and_says_why(tmp_path):
    """Half of a peak of 0 was an open loop at 0 requests/s: a ZeroDivisionError that lost the whole
    servers part (Triton's and the naive baseline's rows with it)."""
    run = servers._Run(
        tmp_path, "m", tmp_path, np.zeros((1, 2, 2, 1), np.uint8), (1,), 1.0, 1, lambda _: None
    )
    run.results["closed"] = [
        {"target": "gateway", "protocol": p, "concurrency": 1, "throughput_rps": 0.0}
        for p in ("http", "grpc")
    ]
    servers._open_loop_at_half_peak(run, servers.Target("gateway", "http://x", "x", "m"))
    assert run.results["open"] == []
    assert "no closed-loop request to the gateway succeeded" in run.results["errors"]["open loop"]


def test_the_gpu_profile_refuses_parts_it_does_not_measure_before_anything_runs(tmp_path, monkeypatch):
    from bench import __main__ as bench_main
    from bench import gpu

    monkeypatch.setattr(gpu, "cuda_status", lambda: gpu.CudaStatus(True, ("CPUExecutionProvider",), "H200"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="--profile gpu measures engines and servers only, not translation"):
        bench_main.main(["--profile", "gpu", "--only", "translation", "--output", str(out)])
    assert not out.exists()


def test_the_gpu_profile_refuses_an_output_that_holds_an_earlier_run(tmp_path, monkeypatch):
    from bench import __main__ as bench_main
    from bench import gpu

    monkeypatch.setattr(gpu, "cuda_status", lambda: gpu.CudaStatus(True, ("CPUExecutionProvider",), "H200"))
    ran = []
    monkeypatch.setattr(bench_main.engines, "run_jobs", lambda *a, **k: ran.append("engines") or [])
    (tmp_path / "repo" / "lenet").mkdir(parents=True)
    (tmp_path / "repo" / "lenet" / "kiln.json").write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"earlier": true}')
    argv = ["--profile", "gpu", "--repository", str(tmp_path / "repo"), "--classifier", "lenet"]
    with pytest.raises(SystemExit, match="already holds a bench result"):
        bench_main.main([*argv, "--output", str(out)])
    assert not ran and json.loads((out / "results.json").read_text()) == {"earlier": True}


def test_the_report_says_how_its_percentiles_are_computed(tmp_path):
    from bench.__main__ import write
    from bench.stats import summarize

    write({"profile": "quick", "machine": MACHINE, "threads": 2, "targets": []}, tmp_path)
    assert "interpolate linearly between the two nearest ranks" in (tmp_path / "report.md").read_text()
    stats = summarize([i / 1000 for i in range(1, 33)])  # 32 samples: p99 between the largest two
    assert 31.0 < stats.p99_ms < 32.0


def test_the_decode_tools_refuse_a_concurrency_of_zero_which_never_admitted_a_sentence():
    from bench.translation_rows import workload_parser

    parser = workload_parser("tool", "a tool", "in flight")
    with pytest.raises(SystemExit):
        parser.parse_args(["--repository", "r", "--checkpoints", "c", "--concurrency", "0"])
    assert parser.parse_args(["--repository", "r", "--checkpoints", "c"]).concurrency == 16


def test_the_decode_replay_without_warm_up_replays_only_the_counted_sentences(monkeypatch, capsys):
    """``--warmup 0`` replayed 0 sentences first and divided by them (ZeroDivisionError)."""
    from bench import decode_replay, translation_engines, translation_rows

    scheduler = SimpleNamespace(spec="spec", run_encoder="enc", run_decoder="dec", indexed=True)
    translator = SimpleNamespace(
        limits=SimpleNamespace(max_texts=64),
        source_ids=lambda texts: [[1] for _ in texts],
        beam_config=lambda options: options,
        schedulers=[scheduler],
    )
    monkeypatch.setattr(
        translation_rows.Workload, "load", classmethod(lambda cls, *a: SimpleNamespace(texts=["a", "b"]))
    )
    monkeypatch.setattr(translation_engines, "kiln_translator", lambda *a: (translator, None))
    replayed = []

    def replay(*_, sentences, **__):
        replayed.append(sentences)
        return SimpleNamespace(line=lambda: f"{sentences} sentences"), []

    monkeypatch.setattr(decode_replay, "replay", replay)
    decode_replay.main(["--repository", "r", "--checkpoints", "c", "--warmup", "0", "--sentences", "5"])
    assert replayed == [5] and "5 sentences" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        decode_replay.main(["--repository", "r", "--checkpoints", "c", "--sentences", "0"])


def test_a_wrong_answer_counts_as_wrong_and_a_failed_request_as_failed_never_both():
    """The replicas row's ``failed`` was the load's errors, which include every wrong answer too."""
    from bench.replicas import Tally
    from bench.scaleout import checked

    answers = {0: "right", 1: "other", 2: ConnectionError("reset")}

    async def ask(i: int) -> str:
        if isinstance(answers[i], Exception):
            raise answers[i]
        return answers[i]

    tally = Tally()
    send = checked(ask, ["right", "right", "right"], tally)

    async def three() -> list[bool]:
        return [await send(), await send(), await load._guarded(send)]

    assert asyncio.run(three()) == [True, False, False]  # neither wrong nor failed counts as completed
    assert (tally.ok, tally.wrong, tally.failed) == (1, 1, 1)


def test_the_ceiling_leaves_out_the_batches_the_gateways_config_can_never_form(tmp_path):
    """The full profile measures batches 128 and 256 beside a max_batch_size of 64: a best batch of 256
    set the c=64 target against a throughput no server of that config can reach."""
    from bench.cpu_parts import _max_batch, mark_servable
    from bench.targets import best_direct_throughput

    entry = tmp_path / "resnet18"
    entry.mkdir()
    (entry / "config.pbtxt").write_text(
        'name: "resnet18"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 64\n'
    )
    rows = [
        {**_engine_row("onnxruntime", 1.0), "batch": 64, "throughput_ips": 2000.0},
        {**_engine_row("onnxruntime", 1.0), "batch": 256, "throughput_ips": 2600.0},
    ]
    assert best_direct_throughput(rows) == 2600.0
    marked = mark_servable(rows, _max_batch(entry))
    assert [r.get("servable", True) for r in marked] == [True, False]
    assert best_direct_throughput(marked) == 2000.0
    assert _max_batch(tmp_path / "missing") == 0 and mark_servable(rows, 0) is rows
