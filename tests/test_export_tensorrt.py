"""TensorRT: profiles derived from the spec and the skip reason run anywhere; the engine build needs a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from export import tensorrt
from export.specs import classifier_spec

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
