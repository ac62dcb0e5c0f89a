"""Every registered classifier, small, with non-trivial BatchNorm, exported once for the whole suite.

The export tests check what export wrote (no BN/Dropout node, parity, kiln.json) and the gateway tests
serve the same repository to tritonclient: one export of ten models instead of one per test module
(each costs ~40 s of torch.onnx on the CI machine). The ``exported_classifiers`` fixture in
``conftest.py`` builds it; nothing may write into it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.classifier import ImageData
from export.pipeline import export_checkpoint
from training.checkpoint import make_checkpoint, save_checkpoint
from training.models import build_model, list_models

# Small settings per family (coverage guard in test_export_classify): every registered classifier is here.
# GoogLeNet keeps its auxiliary heads and DenseNet its dropout, so freezing has something to drop.
SMALL: dict[str, dict] = {
    "lenet": {},
    "alexnet": {"width_mult": 0.25, "hidden": 32},
    "vgg11": {"width_mult": 0.125, "hidden": 32},
    "vgg16": {"width_mult": 0.125, "hidden": 32},
    "nin": {"width_mult": 0.25},
    "googlenet": {"width_mult": 0.25, "aux_logits": True},
    "resnet18": {"width": 8},
    "resnet34": {"width": 8},
    "resnet50": {"width": 8},
    "densenet121": {"growth_rate": 4, "block_config": [2, 2], "num_init_features": 8, "drop_rate": 0.2},
}
SIZE, CHANNELS, CLASSES = 32, 1, 5
LABELS = [f"class_{i}" for i in range(CLASSES)]


def randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so folding actually changes the weights.

    Variances above 1 and gammas below 1 keep activations of deep random nets O(1), like a trained net's.
    """
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
            m.running_var.copy_(2 * torch.rand(m.running_var.shape, generator=gen) + 1.0)
            if m.weight is not None:
                m.weight.data.copy_(0.5 * torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.data.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
    return model


def small_model(name: str) -> tuple[nn.Module, dict]:
    args = {"num_classes": CLASSES, "in_channels": CHANNELS, **SMALL[name]}
    torch.manual_seed(0)
    return randomize_batchnorm(build_model(name, **args)), args


def write_checkpoint(tmp: Path, name: str, data: dict | None = None) -> Path:
    model, args = small_model(name)
    preprocessing = {"input_size": [SIZE, SIZE], "channels": CHANNELS, "mean": [0.4], "std": [0.3]}
    fields = {
        "train_config": {},
        "metrics": {},
        "preprocessing": preprocessing,
        "labels": LABELS,
        "data": data,
    }
    ckpt = make_checkpoint(task="classify", model_name=name, model_args=args, model=model, **fields)
    return save_checkpoint(ckpt, tmp / f"{name}.pt")


def tiny_images(n: int = 24) -> ImageData:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, SIZE, SIZE, CHANNELS), dtype=np.uint8)
    return ImageData(images, images, rng.integers(0, CLASSES, n), "test images")


def export_every_classifier(root: Path) -> tuple[Path, dict[str, list]]:
    """Export every registered classifier (fp32) into ``root / "repo"``: the repository and each
    model's export results."""
    repo, results = root / "repo", {}
    for name in list_models("classify"):
        ckpt = write_checkpoint(root / "ckpt", name)
        results[name] = export_checkpoint(ckpt, repo, validation=tiny_images(), tensorrt="off")
    return repo, results
