"""The GPU profile of the bench: its engine jobs, the gateway on the GPU against the CPU, its summary.

Speed is never asserted here; these tests prove the numbers are computed from what really happened.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest


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
    monkeypatch.setattr(gpu_serving, "run_child", lambda cmd: calls.append(cmd) or 0)
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
    monkeypatch.setattr(gpu_serving, "run_child", lambda cmd: 1)
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


def test_the_direct_run_on_the_gateway_mix_counts_only_the_real_rows_of_its_padded_batches(tmp_path):
    """On this machine the sessions fall back to the CPU provider; the logic is the same on CUDA."""
    from bench import gpu_direct
    from tests.repo_fixtures import build_classifier_repository

    repo = build_classifier_repository(tmp_path / "repo")
    mix = {"batches": {1: 2.0, 4: 2.0}, "items": 8.0}  # 10 padded rows held 8 items
    import contextlib

    import onnxruntime as ort

    on_cpu = "CUDAExecutionProvider" not in ort.get_available_providers()  # ONNX Runtime says it falls back
    with pytest.warns(UserWarning, match="CUDAExecutionProvider") if on_cpu else contextlib.nullcontext():
        result = gpu_direct.direct_on_mix(repo / "lenet" / "1" / "model.onnx", mix, parallel=2, budget_s=0.2)
    assert (result["parallel"], result["fill"]) == (2, 0.8)
    assert result["throughput_ips"] > 0


def test_the_gpu_check_script_parses_and_names_its_usage_without_a_workdir():
    import subprocess
    from pathlib import Path

    script = str(Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh")
    assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0
    bare = subprocess.run(["bash", script], capture_output=True, text=True)
    assert bare.returncode != 0 and "usage: bench/gpu_check.sh WORKDIR" in bare.stderr


def test_the_gpu_serving_run_measures_only_the_sides_and_layouts_asked_for(tmp_path, monkeypatch):
    """``--serving-devices gpu --serving-workers 1 4`` (the graphs stage): two GPU gateways start, no CPU
    one, and no CPU repository is needed; a side asked for without a repository is refused first."""
    import contextlib

    from bench import gpu_serving, translation_engines, translation_rows

    started = []

    @contextlib.contextmanager
    def refuse(cmd, *args, **kwargs):
        started.append(cmd)
        raise RuntimeError("not started in this test")
        yield

    monkeypatch.setattr(gpu_serving, "running", refuse)
    monkeypatch.setattr(gpu_serving, "_input_dims", lambda repository, model: (32, 32, 1))
    work = SimpleNamespace(ckpt=None, texts=[], refs=[], count=len, max_length=64)
    monkeypatch.setattr(translation_rows.Workload, "load", staticmethod(lambda *a: work))
    monkeypatch.setattr(translation_engines, "pytorch_rows", lambda *a, **k: [{"hyps": []}])
    (tmp_path / "gpu" / "resnet18" / "1").mkdir(parents=True)
    (tmp_path / "gpu" / "resnet18" / "1" / "model.onnx").write_bytes(b"")
    profile = {"serving_workers": (1, 4), "sentences": 4}
    kwargs = {"classifier": "resnet18", "translator": "transformer", "threads": 2, "progress": lambda m: None}
    results = gpu_serving.run(tmp_path / "gpu", None, tmp_path, profile, tmp_path, devices=("gpu",), **kwargs)
    assert [cmd[cmd.index("--model-repository") + 1] for cmd in started] == [str(tmp_path / "gpu")] * 2
    assert sorted(results["errors"]) == ["gpu, 1 worker", "gpu, 4 workers"]
    with pytest.raises(ValueError, match="no repository for the cpu side"):
        gpu_serving.run(tmp_path / "gpu", None, tmp_path, profile, tmp_path, **kwargs)


def test_the_gpu_preflight_knows_every_dependency_and_names_what_is_missing(monkeypatch, capsys):
    """The GPU machine is prepared by hand from a list of wheels: when the project gained hpack, the
    gateway stopped there at start-up, stage after stage. The preflight's list is pyproject's."""
    import re
    import tomllib
    from pathlib import Path

    from bench import gpu_preflight

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    deps = {re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    assert set(gpu_preflight.MODULES) == deps
    assert gpu_preflight.missing(gpu_preflight.MODULES) == {}  # this machine has them all
    monkeypatch.setitem(gpu_preflight.MODULES, "hpack", ("hpack_absent_here",))
    monkeypatch.setitem(gpu_preflight.EXTRA, "onnxruntime-gpu", ("onnxruntime",))
    assert gpu_preflight.main([]) == 1
    err = capsys.readouterr().err
    assert "hpack missing (hpack_absent_here does not import)" in err and "-d deps hpack\n" in err


def test_the_gpu_preflights_help_is_printed_not_run(monkeypatch, capsys):
    """``python -m bench.gpu_preflight --help`` ran the preflight."""
    from bench import gpu_preflight

    monkeypatch.setattr(gpu_preflight, "missing", lambda modules: pytest.fail("the preflight ran"))
    with pytest.raises(SystemExit) as stopped:
        gpu_preflight.main(["--help"])
    assert stopped.value.code == 0 and "usage: python -m bench.gpu_preflight" in capsys.readouterr().out


def test_the_graph_probe_checks_bound_runs_on_every_thread_against_a_plain_session(exported_classifiers):
    """Its logic on the CPU (no graph there): every thread's bound runs agree with the plain session,
    the overlapping first runs run beside the plain traffic, and nothing is named a problem."""
    from bench import gpu_graph_probe

    repo, _ = exported_classifiers
    result = gpu_graph_probe.run(repo / "lenet" / "1" / "model.onnx", "cpu", rows=2, runs=8)
    assert result["graphs"] is False and result["providers"] == ["CPUExecutionProvider"]
    assert result["load_thread"]["runs"] == 4 and result["other_thread"]["runs"] == 8
    for reading in (result["other_thread"], *result["overlapping"].values()):
        assert reading["error"] is None, reading
    overlapping = result["overlapping"]
    assert overlapping["bound_4"]["runs"] == overlapping["bound_8"]["runs"] == 4
    assert overlapping["bound_8"]["mismatches"] == 0 and overlapping["plain_traffic"]["runs"] >= 0
    assert gpu_graph_probe.problems(result) == []


def test_the_graph_probe_names_each_error_and_mismatch_and_refuses_cuda_without_it(
    tmp_path, monkeypatch, capsys
):
    from bench import gpu_graph_probe

    ok = {"runs": 8, "mismatches": 0, "error": None}
    result = {
        "load_thread": ok,
        "other_thread": {"runs": 8, "mismatches": 3, "error": None},
        "overlapping": {
            "bound_16": {"runs": 2, "mismatches": 0, "error": "RuntimeError: capture failed"},
            "plain_traffic": ok,
        },
    }
    assert gpu_graph_probe.problems(result) == [
        "other_thread: 3 of 8 runs differ from the plain session",
        "overlapping bound_16: RuntimeError: capture failed",
    ]
    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    monkeypatch.setattr(gpu_graph_probe, "_has_cuda", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        gpu_graph_probe.main([str(model)])
    assert exit_.value.code == 2 and "no CUDA provider" in capsys.readouterr().err
