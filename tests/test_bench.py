"""The benchmark's machinery: statistics, load generators, engine runs, the report, CTranslate2 conversion.

Speed is never asserted here; these tests prove the numbers are computed from what really happened.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

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


def test_closed_loop_keeps_exactly_the_requested_number_of_requests_in_flight():
    state = {"now": 0, "peak": 0, "n": 0}

    async def send() -> bool:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.002)
        state["now"] -= 1
        state["n"] += 1
        return state["n"] % 5 != 0  # every fifth request fails

    result = asyncio.run(load.closed_loop(send, concurrency=4, duration_s=0.3, warmup_s=0.05))
    assert state["peak"] == 4
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


def test_concurrent_calls_count_every_call_of_every_session_over_the_wall_time():
    calls = []

    def run(images):  # ~2 ms a call, releasing the GIL as ONNX Runtime does
        calls.append(images.shape[0])
        time.sleep(0.002)

    latencies, throughput = engines._concurrent_calls([run, run], np.zeros((8, 1)), budget_s=0.1, warmup=1)
    timed = len(calls) - 2  # less the warm-up calls
    assert len(latencies) == timed and min(latencies) >= 0.002
    assert timed >= 2 * 0.1 / 0.004  # both sessions ran side by side, not one after the other
    assert 0.5 * (2 * 8 / 0.002) < throughput < 1.1 * (2 * 8 / 0.002)


def test_ctranslate2_model_scores_like_the_pytorch_transformer(tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2", reason="the bench extra (ctranslate2) is not installed")
    from bench.ctranslate import build_spec
    from training.data.tokenizer import TokenizerConfig, build_tokenizers
    from training.decoding import teacher_forced_logprob
    from training.models import build_model

    pairs = [
        (f"{a} and {b}", f"{b} et {a}")
        for a in ("one", "two", "three", "four")
        for b in ("five", "six", "seven")
    ]
    tok = build_tokenizers(pairs * 4, TokenizerConfig(vocab_size=60, min_frequency=1))
    model = build_model(
        "transformer",
        src_vocab_size=tok.src_vocab_size,
        tgt_vocab_size=tok.tgt_vocab_size,
        d_model=32,
        heads=4,
        ffn_dim=64,
        encoder_layers=2,
        decoder_layers=2,
        dropout=0.0,
    ).eval()
    with torch.no_grad():  # move LayerNorm/bias parameters away from their trivial init
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    spec = build_spec(model, tok.to_dict())
    spec.validate()
    spec.optimize(quantization=None)
    (tmp_path / "ct2").mkdir()
    spec.save(str(tmp_path / "ct2"))
    translator = ctranslate2.Translator(str(tmp_path / "ct2"), device="cpu")
    src_ids = tok.encode_source([s for s, _ in pairs[:4]])
    tgt_ids = [ids + [2] for ids in tok.encode_target([t for _, t in pairs[:4]])]  # bare ids + EOS
    src_tokens = [[tok.source.id_to_token(i) for i in ids] for ids in src_ids]
    tgt_tokens = [[tok.target.id_to_token(i) for i in ids[:-1]] for ids in tgt_ids]
    scored = translator.score_batch(src_tokens, tgt_tokens)
    width_s, width_t = max(map(len, src_ids)), max(map(len, tgt_ids))
    src = torch.tensor([s + [0] * (width_s - len(s)) for s in src_ids])
    tgt = torch.tensor([t + [0] * (width_t - len(t)) for t in tgt_ids])
    expected = teacher_forced_logprob(model, src, tgt)
    got = np.array([sum(r.log_probs) for r in scored])
    np.testing.assert_allclose(got, expected.numpy(), atol=2e-3)


def _fake_entries(root, precisions=("fp32", "fp16", "int8")):
    """kiln.json + empty model files for resnet18's entries: enough for the job lists (nothing runs)."""
    ckpt = root / "resnet18.pt"
    ckpt.write_bytes(b"")
    for precision in precisions:
        entry = root / ("resnet18" if precision == "fp32" else f"resnet18_{precision}")
        (entry / "1").mkdir(parents=True)
        (entry / "1" / "model.onnx").write_bytes(b"")
        meta = {
            "task": "classify",
            "model": {"name": "resnet18"},
            "precision": precision,
            "version": "1",
            "inputs": [{"dims": [-1, 32, 32, 1]}],
            "source_checkpoint": {"path": str(ckpt)},
        }
        (entry / "kiln.json").write_text(json.dumps(meta))
    return root


GPU_FULL = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def test_the_gpu_profile_measures_every_cuda_engine_on_fp32_and_fp16_but_not_int8(tmp_path):
    from bench import gpu

    repo = _fake_entries(tmp_path)
    jobs = gpu.gpu_jobs(repo, tmp_path, "resnet18", (1, 64), 1.0, gpu.CudaStatus(True, GPU_FULL, "H200"))
    assert sorted((j.engine, j.precision) for j in jobs) == sorted(
        [
            ("pytorch-cuda", "fp32"),
            ("pytorch-cuda", "fp16"),
            *[
                (e, p)
                for e in ("onnxruntime-cuda", "onnxruntime-cuda+iobinding", "onnxruntime-tensorrt")
                for p in ("fp32", "fp16")
            ],
        ]
    )
    assert all(j.batch_sizes == (1, 64) for j in jobs)


def test_the_gpu_profile_keeps_only_the_engines_this_machine_can_run(tmp_path):
    from bench import gpu

    repo = _fake_entries(tmp_path)
    torch_only = gpu.gpu_jobs(
        repo, tmp_path, "resnet18", (1,), 1.0, gpu.CudaStatus(True, ("CPUExecutionProvider",))
    )
    assert {j.engine for j in torch_only} == {"pytorch-cuda"}
    ort_only = gpu.gpu_jobs(repo, tmp_path, "resnet18", (1,), 1.0, gpu.CudaStatus(False, GPU_FULL[1:]))
    assert {j.engine for j in ort_only} == {"onnxruntime-cuda", "onnxruntime-cuda+iobinding"}
    status = gpu.CudaStatus(False, ("CPUExecutionProvider",))
    assert not status.usable and "PyTorch sees no CUDA GPU" in status.reason()
    assert "no CUDA provider" in status.reason()


def test_the_gpu_profile_without_cuda_says_so_and_measures_nothing(tmp_path, monkeypatch, capsys):
    from bench import __main__ as bench_main
    from bench import gpu

    monkeypatch.setattr(gpu, "cuda_status", lambda: gpu.CudaStatus(False, ("CPUExecutionProvider",)))
    bench_main.main(
        ["--profile", "gpu", "--repository", str(tmp_path / "none"), "--output", str(tmp_path / "out")]
    )
    assert "needs a CUDA GPU" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_the_gpu_gateway_comparison_refuses_a_cpu_config_before_anything_runs(tmp_path, monkeypatch):
    from bench import __main__ as bench_main
    from bench import gpu, gpu_serving
    from tests.repo_fixtures import build_classifier_repository

    repo = build_classifier_repository(tmp_path / "repo")
    monkeypatch.setattr(gpu, "cuda_status", lambda: gpu.CudaStatus(True, GPU_FULL, "H200"))
    ran = []
    monkeypatch.setattr(bench_main.engines, "run_jobs", lambda *a, **k: ran.append("engines") or [])
    argv = ["--profile", "gpu", "--repository", str(repo), "--classifier", "lenet"]
    with pytest.raises(SystemExit, match=r"asks for KIND_CPU, not KIND_GPU: .*make export DEVICE=gpu"):
        bench_main.main([*argv, "--output", str(tmp_path / "out")])
    assert not ran and not (tmp_path / "out").exists()
    config = repo / "lenet" / "config.pbtxt"
    config.write_text(config.read_text().replace("KIND_CPU", "KIND_GPU"))
    assert gpu_serving.gpu_config_problem(repo, "lenet") is None
    assert "is not an exported entry" in gpu_serving.gpu_config_problem(repo, "absent")


def test_the_cpu_side_is_exported_beside_the_gpu_repository_from_the_same_checkpoints(tmp_path, monkeypatch):
    from bench import gpu_serving

    calls = []
    monkeypatch.setattr(
        gpu_serving.subprocess, "run", lambda cmd: calls.append(cmd) or SimpleNamespace(returncode=0)
    )
    cpu = gpu_serving.cpu_repository_for(tmp_path / "model_repository")
    assert cpu == tmp_path / "model_repository-cpu"
    gpu_serving.export_cpu_side(tmp_path / "ckpt", ("resnet18", "transformer"), cpu)
    assert calls[0][1:] == [
        "-m",
        "export",
        str(tmp_path / "ckpt" / "resnet18.pt"),
        str(tmp_path / "ckpt" / "transformer.pt"),
        "--repository",
        str(cpu),
        "--precisions",
        "fp32",
    ]
    monkeypatch.setattr(gpu_serving.subprocess, "run", lambda cmd: SimpleNamespace(returncode=1))
    with pytest.raises(RuntimeError, match="the CPU export failed"):
        gpu_serving.export_cpu_side(tmp_path / "ckpt", ("resnet18",), cpu)


def test_gpu_engine_rows_are_compared_with_pytorch_cuda_fp32_at_the_same_batch():
    from bench import gpu

    rows = [
        {"engine": "pytorch-cuda", "precision": "fp32", "batch": 8, "p50_ms": 4.0},
        {"engine": "onnxruntime-cuda+iobinding", "precision": "fp16", "batch": 8, "p50_ms": 1.0},
        {
            "engine": "onnxruntime-tensorrt",
            "precision": "fp16",
            "error": "TensorrtExecutionProvider did not load",
        },
    ]
    text = gpu.engine_section(rows)
    assert rows[1]["speedup_vs_pytorch_cuda_fp32"] == 4.0
    assert "onnxruntime-tensorrt fp16: TensorrtExecutionProvider did not load" in text


def test_the_io_bound_runner_gives_the_outputs_of_a_plain_run(tmp_path):
    """Its logic on the CPU device (the GPU profile binds to "cuda" the same way)."""
    import onnxruntime as ort

    from bench import gpu
    from tests.repo_fixtures import build_classifier_repository

    repo = build_classifier_repository(tmp_path / "repo", ("lenet",))
    session = ort.InferenceSession(
        str(repo / "lenet" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    run = gpu._io_bound(session, device="cpu")
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 1), dtype=np.uint8)  # repo_fixtures.SIZE
    expected = session.run(None, {"images": images})
    for _ in range(2):  # the second call reuses the binding of this shape
        got = run(images).copy_outputs_to_cpu()
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert run(images[:1]).copy_outputs_to_cpu()[0].shape[0] == 1


def test_translation_targets_use_the_gateway_layout_that_measured_best_and_name_it():
    from bench.translation import acceptance
    from bench.translation_gateway import gateway_engine

    def row(engine: str, tokens_per_s: float, concurrency: int = 32, **extra) -> dict:
        return {
            "engine": engine,
            "beam": 4,
            "concurrency": concurrency,
            "tokens_per_s": tokens_per_s,
            **extra,
        }

    rows = [
        row(gateway_engine("", 1), 3000.0, workers=1),
        row(gateway_engine("", 2), 5000.0, workers=2),
        row(gateway_engine("", 2), 9000.0, concurrency=64, workers=2),  # not the c=32 target
        row(gateway_engine("int8 entry", 1), 4000.0, workers=1),
        row(gateway_engine("int8 entry", 2), 2000.0, workers=2),
        row("ctranslate2 fp32 (inter 2, intra 1)", 10000.0),
        row("pytorch (kv cache)", 1000.0),
    ]
    measured = {t["target"]: t["measured"] for t in acceptance(rows)}
    ct2 = "CTranslate2 fp32 at its best layout"
    pytorch = "gateway (2 workers) c=32 beam 4 >= 4x the PyTorch reference with KV cache (best layout)"
    assert measured[f"gateway (2 workers) c=32 beam 4 tokens/s >= 0.5x {ct2}"] == pytest.approx(0.5)
    assert measured[pytorch] == 5.0
    # PyTorch in one single-thread process per core, where faster, is the reference's best layout
    rows.append(row("pytorch (kv cache, 2 processes x 1 thread)", 2000.0))
    assert {t["target"]: t["measured"] for t in acceptance(rows)}[pytorch] == 2.5
    assert measured[f"gateway (int8 entry, 1 worker) >= 0.7x {ct2}"] == pytest.approx(0.4)
    assert gateway_engine("mixed beams", 2) == "gateway (mixed beams, 2 workers)"


def _translation_row(engine: str, beam: int, hyps: list[str], **extra) -> dict:
    return {"engine": engine, "beam": beam, "concurrency": 8, "hyps": hyps, **extra}


def test_agreement_counts_each_translation_that_differs_from_the_reference_at_its_own_beam_and_shows_it():
    from bench.translation_gateway import mixed_beams
    from bench.translation_rows import agreement

    texts = ["one", "two", "three", "four"]
    mixed = mixed_beams((1, 4), len(texts))
    rows = [
        _translation_row("pytorch (kv cache)", 1, ["un", "deux", "trois", "quatre"]),
        _translation_row("pytorch (kv cache)", 4, ["un", "deux", "trois", "quatre!"]),
        _translation_row("gateway (2 workers)", 4, ["un", "deux", "troi", "quatre!"]),
        _translation_row(
            "gateway (mixed beams, 2 workers)", 0, ["un", "deux", "trois", "quatre"], beams=mixed
        ),
        _translation_row("ctranslate2 fp32 (1 thread)", 8, ["un", "deux", "trois", "quatre"]),
    ]
    agreement(rows, texts)
    gateway, mixed_row, no_reference = rows[2], rows[3], rows[4]
    assert mixed == [1, 4, 1, 4]
    assert gateway["same_as_reference"] == 75.0 and gateway["differs_from_reference"] == 1
    assert gateway["first_differences"] == [
        {"index": 2, "beam": 4, "source": "three", "output": "troi", "reference": "trois"}
    ]
    # sentence 3 ran at beam 4, whose reference ends with "!": the mixed row is compared per sentence
    assert mixed_row["differs_from_reference"] == 1
    assert mixed_row["first_differences"][0]["index"] == 3
    assert "same_as_reference" not in no_reference  # no reference at beam 8: nothing claimed


def test_the_identity_target_reads_the_worst_served_row_and_counts_every_differing_translation():
    from bench.translation_identity import differences_markdown, identity_target

    difference = {"index": 7, "beam": 8, "source": "nine", "output": "neuf neuf", "reference": "neuf"}
    rows = [
        _translation_row("pytorch (kv cache)", 8, [], same_as_reference=100.0, differs_from_reference=0),
        _translation_row("gateway (2 workers)", 8, [], same_as_reference=100.0, differs_from_reference=0),
        _translation_row(
            "gateway->triton (triton)",
            8,
            [],
            same_as_reference=98.0,
            differs_from_reference=3,
            first_differences=[difference],
        ),
        _translation_row("kiln engine (batch 32)", 8, [], same_as_reference=50.0, differs_from_reference=9),
    ]
    target = identity_target("gru_attention", rows)
    assert target["measured"] == 98.0 and target["goal"] == 100.0
    assert target["note"] == "1 of 2 gateway/Triton rows identical; 3 translations differ in all"
    shown = differences_markdown("gru_attention", rows)
    assert "gateway->triton (triton) beam 8 c=8, sentence 7 'nine': 'neuf neuf' vs reference 'neuf'" in shown


def test_identity_translators_default_to_every_other_registered_translator_and_the_bare_flag_means_none():
    from bench.__main__ import parse_args
    from bench.translation_identity import identity_models

    default, bare = parse_args([]), parse_args(["--identity-translators"])
    assert identity_models(default.translator, default.identity_translators) == [
        "gru_attention",
        "lstm_attention",
    ]
    assert identity_models("gru_attention", ["gru_attention", "lstm_attention"]) == ["lstm_attention"]
    assert identity_models(bare.translator, bare.identity_translators) == []


def test_a_missing_identity_checkpoint_is_trained_then_exported_and_a_failure_is_reported_not_raised(
    tmp_path, monkeypatch
):
    import argparse

    from bench import translation_identity

    (tmp_path / "lstm_attention.pt").write_bytes(b"")  # present: exported, not trained
    stages = []

    def stage(title: str, cmd: list[str], progress) -> None:
        stages.append(cmd[cmd.index("-m") + 1 :])
        if "export" in cmd:
            raise RuntimeError(f"{title} failed")

    monkeypatch.setattr(translation_identity, "_stage", stage)
    args = argparse.Namespace(
        translator="transformer",
        identity_translators=None,
        checkpoints=tmp_path,
        repository=tmp_path / "repo",
        threads=2,
    )
    errors: dict[str, str] = {}
    assert translation_identity.prepare(args, 16, errors) == []
    trained = stages[0]
    assert trained[:3] == ["training.translate", "--model", "gru_attention"]
    assert trained[-4:] == ["--threads", "2", "--output-dir", str(tmp_path)]
    assert stages[1:] == [
        ["export", str(tmp_path / "gru_attention.pt"), "--repository", str(tmp_path / "repo")],
        ["export", str(tmp_path / "lstm_attention.pt"), "--repository", str(tmp_path / "repo")],
    ]
    assert set(errors) == {"identity gru_attention", "identity lstm_attention"}


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


GPU_METRICS = """\
kiln_batch_size_bucket{model="resnet18",le="1.0"} 10.0
kiln_batch_size_bucket{model="resnet18",le="2.0"} 10.0
kiln_batch_size_bucket{model="resnet18",le="4.0"} 14.0
kiln_batch_size_bucket{model="resnet18",le="+Inf"} 14.0
kiln_batch_size_sum{model="resnet18"} 24.0
kiln_batch_size_count{model="resnet18"} 14.0
kiln_batch_size_bucket{model="other",le="1.0"} 99.0
kiln_decoder_step_seconds_sum{model="transformer"} 0.5
kiln_decoder_step_seconds_count{model="transformer"} 200.0
kiln_decoder_rows_per_step_sum{model="transformer"} 1600.0
kiln_decoder_rows_per_step_count{model="transformer"} 200.0
"""


def test_the_gpu_gateway_batch_mix_is_read_per_size_bucket_and_differenced_between_readings():
    from bench import scrape

    mix = scrape.batch_mix(GPU_METRICS, "resnet18")
    assert mix == {"batches": {1: 10.0, 4: 4.0}, "items": 24.0}  # 10 single-item batches, 4 of 3-4 items
    later = scrape.batch_mix(GPU_METRICS.replace('le="4.0"} 14.0', 'le="4.0"} 20.0'), "resnet18")
    assert scrape.mix_delta(mix, {**later, "items": 44.0}) == {"batches": {4: 6.0}, "items": 20.0}
    assert scrape.step_means(GPU_METRICS, "transformer") == {"step_ms": 2.5, "rows_per_step": 8.0}
    named = 'kiln_worker_info{pid="41",worker="1"} 1.0\n' + GPU_METRICS
    assert (scrape.worker_of(named), scrape.worker_of(GPU_METRICS)) == ('pid="41",worker="1"', None)
    assert math.isnan(scrape.step_means(GPU_METRICS, "absent")["step_ms"])


def test_the_gpu_serving_layouts_follow_the_cores():
    from bench import gpu_serving

    assert [gpu_serving.default_layouts(n) for n in (1, 2, 4, 16)] == [(1,), (1,), (1, 2), (1, 4, 8)]


def test_the_gpu_serving_summary_compares_the_best_layout_of_each_device_and_the_worst_identity():
    from bench import gpu_serving

    classify = [
        {
            "device": "gpu",
            "workers": 1,
            "concurrency": 64,
            "throughput_rps": 5000.0,
            "gateway_over_direct": 0.7,
        },
        {
            "device": "gpu",
            "workers": 4,
            "concurrency": 64,
            "throughput_rps": 12000.0,
            "gateway_over_direct": 0.4,
        },
        {"device": "gpu", "workers": 4, "concurrency": 1, "throughput_rps": 500.0},
        {"device": "cpu", "workers": 8, "concurrency": 64, "throughput_rps": 8000.0},
    ]
    translate = [
        {"device": "gpu", "workers": 1, "tokens_per_s": 5000.0, "same_as_reference": 100.0},
        {"device": "cpu", "workers": 8, "tokens_per_s": 10000.0, "same_as_reference": 99.0},
    ]
    rows = {r["target"]: r for r in gpu_serving.summary({"classify": classify, "translate": translate})}
    assert [r["measured"] for r in rows.values()] == [1.5, 0.4, 0.5, 99.0]
    assert [r["met"] for r in rows.values()] == ["no", "no", "no", "no"]


def _stub_translator(status: int = 200, flaky: str | None = None):
    """A gateway stand-in answering each translate request with its text upper-cased (``flaky``: that
    text is answered lower-cased from its second request on)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    seen = []

    async def translate(request):
        body = await request.json()
        seen.append((request.path_params["name"], body["texts"], body["beam_size"]))
        text = body["texts"][0]
        again = text == flaky and sum(texts == [text] for _, texts, _ in seen) > 1
        answer = {"translations": [{"hypotheses": [{"text": text.lower() if again else text.upper()}]}]}
        return JSONResponse(answer if status == 200 else {"error": "busy"}, status_code=status)

    return Starlette(routes=[Route("/v1/models/{name}/translate", translate, methods=["POST"])]), seen


def test_the_translation_load_client_sends_each_text_alone_and_keeps_each_answer_with_its_text():
    from bench.translation_gateway import _gateway_run
    from tests.repo_fixtures import LiveServer

    app, seen = _stub_translator()
    texts = [f"text {i}" for i in range(9)]
    with LiveServer(app) as live:
        hyps, elapsed, latencies = asyncio.run(
            _gateway_run(f"http://{live.url}", "m", texts, list(range(9)), 4)
        )
    assert hyps == [t.upper() for t in texts] and len(latencies) == 9 and elapsed > 0
    assert sorted(seen) == [("m", [t], i) for i, t in enumerate(texts)]


def test_the_translation_load_client_fails_on_an_error_status_naming_it():
    from bench.translation_gateway import _gateway_run
    from tests.repo_fixtures import LiveServer

    app, _ = _stub_translator(status=503)
    with LiveServer(app) as live, pytest.raises(RuntimeError, match="HTTP 503 for text 0"):
        asyncio.run(_gateway_run(f"http://{live.url}", "m", ["x"], 4, 1))


def test_a_text_translated_differently_across_rounds_is_marked_so_that_it_counts_as_differing():
    from bench.translation_gateway import _gateway_run, steady_rounds
    from tests.repo_fixtures import LiveServer

    app, seen = _stub_translator(flaky="b")
    with LiveServer(app) as live:
        hyps, _, latencies = asyncio.run(_gateway_run(f"http://{live.url}", "m", ["a", "b"], 4, 1, rounds=3))
    assert hyps == ["A", "<inconsistent across rounds: 'B' then 'b'>"] and len(latencies) == len(seen) == 6
    assert steady_rounds(128, 32) == 4 and steady_rounds(128, 1) == 1 and steady_rounds(100, 64) == 11


def test_the_direct_run_on_the_gateway_mix_counts_only_the_real_rows_of_its_padded_batches(tmp_path):
    """On this machine the sessions fall back to the CPU provider; the logic is the same on CUDA."""
    from bench import gpu_serving
    from tests.repo_fixtures import build_classifier_repository

    repo = build_classifier_repository(tmp_path / "repo")
    mix = {"batches": {1: 2.0, 4: 2.0}, "items": 8.0}  # 10 padded rows held 8 items
    import contextlib

    import onnxruntime as ort

    on_cpu = "CUDAExecutionProvider" not in ort.get_available_providers()  # ONNX Runtime says it falls back
    with pytest.warns(UserWarning, match="CUDAExecutionProvider") if on_cpu else contextlib.nullcontext():
        result = gpu_serving.direct_on_mix(repo / "lenet" / "1" / "model.onnx", mix, parallel=2, budget_s=0.2)
    assert (result["parallel"], result["fill"]) == (2, 0.8)
    assert result["throughput_ips"] > 0


def test_the_gpu_check_script_parses_and_names_its_usage_without_a_workdir():
    import subprocess
    from pathlib import Path

    script = str(Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh")
    assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0
    bare = subprocess.run(["bash", script], capture_output=True, text=True)
    assert bare.returncode != 0 and "usage: bench/gpu_check.sh WORKDIR" in bare.stderr


def test_the_parallel_pytorch_reference_adds_its_processes_and_translates_as_one(tmp_path):
    """Two single-thread processes on the same sentences: their throughput summed, the same output."""
    from bench.translation_engines import MAX_LENGTH, pytorch_parallel_row, pytorch_rows
    from bench.translation_rows import Counter
    from tests.test_export_translate import _translator_checkpoint
    from training.checkpoint import load_checkpoint

    path = _translator_checkpoint("transformer", tmp_path, max_positions=MAX_LENGTH + 1)
    ckpt = load_checkpoint(path)
    count = Counter(ckpt["tokenizers"]["target"])
    texts = ["w4 w5 w6", "w7 w8", "w9 w10 w11 w12"]
    row = pytorch_parallel_row(path, texts, texts, 2, count)
    one = pytorch_rows(ckpt, texts, texts, (4,), 1, count, caches=(True,))[0]
    assert row["engine"] == "pytorch (kv cache, 2 processes x 1 thread)"
    assert row["hyps"] == one["hyps"] and row["bleu"] == one["bleu"]
    assert row["tokens_per_s"] > 0 and row["sentences_per_s"] > 0
    assert pytorch_parallel_row(path, texts, texts, 1, count) is None  # one process: the plain row
