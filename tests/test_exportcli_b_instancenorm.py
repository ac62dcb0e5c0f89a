"""A classifier with an InstanceNorm that tracks running statistics freezes and exports to ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from export.freeze import freeze
from export.onnx_export import classifier_graph, export_onnx
from export.specs import classifier_spec

PREP = {"input_size": [8, 8], "channels": 1, "mean": [0.5], "std": [0.25]}


def _model() -> nn.Module:
    torch.manual_seed(0)
    norm = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
    norm.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    norm.running_var.copy_(torch.tensor([2.0, 0.5, 1.5, 3.0]))
    body = [nn.Conv2d(1, 4, 3, padding=1), norm, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*body, nn.Linear(4, 3)).eval()


def test_an_instancenorm_with_running_statistics_becomes_a_channel_affine_when_frozen() -> None:
    model = _model()
    frozen, report = freeze(model, (torch.randn(2, 1, 8, 8),))
    assert not any(isinstance(m, nn.modules.instancenorm._InstanceNorm) for m in frozen.modules())
    assert report.affine == ["1"]
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(frozen(x), model(x), atol=1e-5, rtol=0)


def test_its_onnx_graph_passes_the_graph_check_and_matches_pytorch(tmp_path: Path) -> None:
    """Was: "training-only nodes left in the graph: BatchNormalization", reported as an untraceable model."""
    model = _model()
    frozen, _ = freeze(model, (torch.randn(2, 1, 8, 8),))
    spec = classifier_spec("inorm", PREP, 3, max_batch_size=8)
    images = torch.randint(0, 256, (2, 8, 8, 1), dtype=torch.uint8)
    path = export_onnx(classifier_graph(frozen, PREP), spec, (images,), tmp_path / "model.onnx")
    batch = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    logits = ort.InferenceSession(str(path)).run(["logits"], {"images": batch})[0]
    expected = classifier_graph(model, PREP)(torch.from_numpy(batch))[0].detach().numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
