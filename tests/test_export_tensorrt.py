"""TensorRT: profiles derived from the spec and the skip reason run anywhere; the engine build needs a GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from export import tensorrt
from export.specs import classifier_spec

H200 = {"version": "10.3.0", "device": "NVIDIA H200", "compute_capability": "9.0"}
PREP = {"input_size": [28, 28], "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}


def test_optimization_profile_comes_from_the_spec_axes():
    spec = classifier_spec("lenet", PREP, 10, max_batch_size=32)
    (profile,) = tensorrt.optimization_profile(spec)
    assert profile.name == "images"
    assert (profile.min, profile.opt, profile.max) == ((1, 28, 28, 3), (16, 28, 28, 3), (32, 28, 28, 3))


def test_tensorrt_off_is_skipped_with_a_reason_and_on_without_it_is_an_error(monkeypatch):
    assert tensorrt.should_build("off") == (False, "TensorRT skipped: disabled with --tensorrt off")
    monkeypatch.setattr(tensorrt, "unavailable_reason", lambda: "TensorRT skipped: no CUDA GPU is available")
    build, reason = tensorrt.should_build("auto")
    assert not build and reason == "TensorRT skipped: no CUDA GPU is available"
    with pytest.raises(tensorrt.TensorRTError, match="required by --tensorrt on"):
        tensorrt.should_build("on")
    with pytest.raises(ValueError, match="--tensorrt must be one of"):
        tensorrt.should_build("maybe")


def test_unavailable_reason_is_one_line_or_none():
    reason = tensorrt.unavailable_reason()
    assert reason is None or (reason.startswith("TensorRT skipped:") and "\n" not in reason)


@pytest.mark.tensorrt
def test_tensorrt_builds_an_engine_from_an_exported_classifier(tmp_path: Path):
    reason = tensorrt.unavailable_reason()
    if reason:
        pytest.skip(reason)
    import torch

    from export.onnx_export import classifier_graph, export_onnx
    from training.models import build_model

    spec = classifier_spec("lenet", PREP, 10, max_batch_size=8)
    model = classifier_graph(build_model("lenet", num_classes=10, in_channels=3).eval(), PREP)
    onnx_path = export_onnx(
        model, spec, (torch.zeros(2, 28, 28, 3, dtype=torch.uint8),), tmp_path / "model.onnx"
    )
    cache = tmp_path / "timing.cache"
    plan = tensorrt.build_engine(
        onnx_path, tmp_path / "model.plan", spec, precision="fp16", timing_cache=cache
    )
    assert plan.stat().st_size > 0 and cache.stat().st_size > 0
    tensorrt.build_engine(onnx_path, tmp_path / "again.plan", spec, precision="fp16", timing_cache=cache)


@pytest.fixture
def fake_tensorrt(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """TensorRT 'available' without TensorRT: each engine built is a small file; returns their precisions."""
    return install_fake_tensorrt(monkeypatch)


def install_fake_tensorrt(monkeypatch: pytest.MonkeyPatch, refusal: Any = None) -> list[str]:
    """:func:`fake_tensorrt`'s stand-in, ``refusal(onnx_path)`` (where given) naming why TensorRT's parser
    would refuse a graph, "" where it takes it: a refused one fails its build as TensorRT's does."""
    built: list[str] = []

    def build_engine(onnx_path: Path, plan_path: Path, spec: object, *, precision: str, **_: object) -> Path:
        reason = refusal(onnx_path) if refusal else ""
        if reason:
            raise tensorrt.TensorRTError(f"{onnx_path}: TensorRT could not parse the ONNX graph: [{reason}]")
        built.append(precision)
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        plan_path.write_bytes(b"plan " + precision.encode())
        return plan_path

    monkeypatch.setattr(tensorrt, "should_build", lambda mode: (True, "TensorRT available"))
    monkeypatch.setattr(tensorrt, "build_engine", build_engine)
    monkeypatch.setattr(tensorrt, "engine_target", lambda: dict(H200))
    return built


def test_an_int8_refusal_removes_and_remembers_the_tensorrt_twin_too(
    tmp_path: Path, fake_tensorrt: list[str]
):
    from export.pipeline import export_checkpoint
    from export.quantize import GateResult
    from export.repository import write_entry
    from tests.classifier_exports import tiny_images, write_checkpoint

    ckpt, repo = write_checkpoint(tmp_path, "lenet"), tmp_path / "repo"

    def earlier_engine(tmp: Path) -> dict[str, object]:  # an int8 engine a run that passed the gate wrote
        (tmp / "1").mkdir()
        (tmp / "1" / "model.plan").write_bytes(b"plan")
        return {"task": "classify", "precision": "int8"}

    write_entry(repo, "lenet_int8_trt", earlier_engine)

    def dropped(gate: GateResult) -> GateResult:  # int8 now loses 10 points of accuracy
        return GateResult(gate.accuracy_fp32, gate.accuracy_fp32 - 0.10, gate.max_drop)

    options = {"precisions": ("fp32", "int8"), "validation": tiny_images(), "tensorrt": "auto"}
    status = {r.entry: r.status for r in export_checkpoint(ckpt, repo, accuracy_hook=dropped, **options)}
    assert status["lenet_int8"] == status["lenet_int8_trt"] == "rejected"
    assert status["lenet_trt"] == "written" and fake_tensorrt == ["fp32"]
    assert not (repo / "lenet_int8_trt").exists()  # no longer served
    again = {r.entry: r for r in export_checkpoint(ckpt, repo, **options)}
    assert {again[e].status for e in ("lenet_int8", "lenet_int8_trt", "lenet_trt")} == {"up to date"}
    assert "refused by its gate earlier" in again["lenet_int8_trt"].message and fake_tensorrt == ["fp32"]


def test_a_plan_records_its_tensorrt_version_and_gpu_and_is_rebuilt_for_another(
    tmp_path: Path, fake_tensorrt: list[str], monkeypatch: pytest.MonkeyPatch
):
    import json

    from export.pipeline import export_checkpoint
    from tests.classifier_exports import tiny_images, write_checkpoint

    ckpt, repo = write_checkpoint(tmp_path, "lenet"), tmp_path / "repo"
    options = {"validation": tiny_images(), "tensorrt": "auto"}
    target = dict(H200)
    monkeypatch.setattr(tensorrt, "engine_target", lambda: dict(target))

    def export() -> dict[str, str]:
        return {r.entry: r.status for r in export_checkpoint(ckpt, repo, **options)}

    assert export() == {"lenet": "written", "lenet_trt": "written"}
    meta = json.loads((repo / "lenet_trt" / "kiln.json").read_text())
    assert meta["platform"] == "tensorrt_plan" and meta["export"]["tensorrt"] == H200
    assert "tensorrt" not in json.loads((repo / "lenet" / "kiln.json").read_text())["export"]
    assert export() == {"lenet": "up to date", "lenet_trt": "up to date"} and fake_tensorrt == ["fp32"]
    target.update(device="NVIDIA A100-SXM4-80GB", compute_capability="8.0")  # the repository moved
    assert export() == {"lenet": "up to date", "lenet_trt": "written"} and fake_tensorrt == ["fp32"] * 2
    target.update(H200, version="10.4.0")  # another TensorRT on the same GPU
    assert export()["lenet_trt"] == "written" and len(fake_tensorrt) == 3
    assert json.loads((repo / "lenet_trt" / "kiln.json").read_text())["export"]["tensorrt"] == target


def test_engine_target_names_the_tensorrt_version_and_the_gpu():
    reason = tensorrt.unavailable_reason()
    if reason:
        pytest.skip(reason)
    target = tensorrt.engine_target()
    assert set(target) == {"version", "device", "compute_capability"}
    assert all(isinstance(v, str) and v for v in target.values())
