"""A classifier whose parameter only some batches reach (a routed expert, a branch taken on some
inputs) under torchrun: the rank whose first batch left it unused refuses the run, while rank 0, which
used it, waits in DDP's reduction for that rank. Its line was printed on rank 0 alone, so the run ended
with torchrun's exit code 2 and rank 0's gloo "Connection closed by peer" and no word of the cause."""

from __future__ import annotations

import pytest

from tests.torchrun import two_ranks

MODELS = """
import os
from dataclasses import dataclass

from torch import nn

from training.models import register_model
from training.models.layers import ClassifierConfig


@dataclass
class RoutedConfig(ClassifierConfig):
    width: int = 8


class Routed(nn.Module):
    def __init__(self, config):
        super().__init__()
        w = config.width
        self.features = nn.Sequential(nn.Conv2d(config.in_channels, w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(4 * w, config.num_classes)
        self.expert = nn.Linear(4 * w, config.num_classes)

    def forward(self, x):
        h = self.features(x).flatten(1)
        # the route a batch takes depends on its data; made certain here: only rank 0's reach the expert
        return self.head(h) + self.expert(h) if os.environ.get("RANK") == "0" else self.head(h)


@register_model("review_m_routed", task="classify", config=RoutedConfig)
def routed(config):
    return Routed(config)
"""


@pytest.mark.timeout(100)
def test_the_rank_whose_batch_left_a_parameter_unused_names_it(tmp_path):
    (tmp_path / "review_m_nets.py").write_text(MODELS, encoding="utf-8")
    argv = ["-m", "training.classify", "--models-from", "review_m_nets", "--model", "review_m_routed"]
    argv += ["--epochs", "1", "--limit-train", "64", "--limit-val", "16", "--image-size", "16"]
    argv += ["--batch-size", "16", "--no-progress", "--device", "cpu", "--output-dir", str(tmp_path / "out")]
    done = two_ranks(argv, tmp_path / "torchrun", {"PYTHONPATH": str(tmp_path)})
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("error (rank 1): ")]
    assert len(lines) == 1, done.stderr[-3000:]
    assert "parameter(s) expert.weight, expert.bias get no gradient from the training loss" in lines[0]
