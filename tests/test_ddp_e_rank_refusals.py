"""A refusal raised on one torchrun rank only, while it trains on its own share of the data (a model of
the user's refusing a batch, a bad example), was printed by no one: the trainers' command printed a
``ValueError`` on rank 0 alone, so rank 1 exited 2 in silence, torchrun stopped rank 0, and all the user
read was torchrun's "exitcode: 2 ... To enable traceback see" and rank 0's gloo "Connection closed by
peer ... Check the logs of the remote worker", whose log held nothing. Now the rank that raised it says
it in one line naming itself, in both trainers."""

from __future__ import annotations

import pytest
import torch

from tests.torchrun import two_ranks
from training.divergence import TrainingDiverged
from training.runtime import Dist, RankFailed, rank_errors

INJECTED = "ddp_e injected refusal of this batch"

MODELS = f"""
import os
from dataclasses import dataclass

from torch import nn

from training.models import register_model
from training.models.layers import ClassifierConfig


@dataclass
class PickyConfig(ClassifierConfig):
    width: int = 8


class Picky(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(config.in_channels, config.width, 3), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(config.width, config.num_classes)

    def forward(self, x):
        if self.training and os.environ.get("RANK") == "1":  # a batch only rank 1's shard holds
            raise ValueError("{INJECTED}")
        return self.head(self.features(x).flatten(1))


@register_model("ddp_e_picky", task="classify", config=PickyConfig)
def picky(config):
    return Picky(config)
"""

TRANSLATE = f"""
import os
import sys

from training import translate_loop

real_loss = translate_loop.loss_on


def loss_on(model, batch, smoothing):
    if os.environ.get("RANK") == "1":  # a batch only rank 1's share holds
        raise ValueError("{INJECTED}")
    return real_loss(model, batch, smoothing)


translate_loop.loss_on = loss_on
from training.translate import main

raise SystemExit(main(sys.argv[1:]))
"""

TINY_TRANSLATOR = ["--n-pairs", "200", "--epochs", "1", "--batch-size", "16", "--vocab-size", "120"]
TINY_TRANSLATOR += ["--model-arg", "d_model=16", "--model-arg", "heads=2", "--model-arg", "ffn_dim=32"]
TINY_TRANSLATOR += ["--model-arg", "encoder_layers=1", "--model-arg", "decoder_layers=1"]
TINY_TRANSLATOR += ["--val-limit", "8", "--test-beam", "1", "--no-progress", "--device", "cpu"]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error")]


@pytest.mark.timeout(90)
def test_a_classifier_refusal_on_rank_1_alone_is_printed_by_rank_1(tmp_path):
    (tmp_path / "ddp_e_mynets.py").write_text(MODELS, encoding="utf-8")
    argv = ["-m", "training.classify", "--models-from", "ddp_e_mynets", "--model", "ddp_e_picky"]
    argv += ["--epochs", "1", "--limit-train", "32", "--limit-val", "8", "--image-size", "8"]
    argv += ["--batch-size", "8", "--no-progress", "--device", "cpu", "--output-dir", str(tmp_path / "out")]
    done = two_ranks(argv, tmp_path / "torchrun", {"PYTHONPATH": str(tmp_path)})
    assert done.returncode != 0
    assert error_lines(done.stderr) == [f"error (rank 1): {INJECTED}"], done.stderr[-3000:]


@pytest.mark.timeout(90)
def test_a_translator_refusal_on_rank_1_alone_is_printed_by_rank_1(tmp_path):
    script = tmp_path / "ddp_e_translate.py"
    script.write_text(TRANSLATE, encoding="utf-8")
    argv = [str(script), *TINY_TRANSLATOR, "--output-dir", str(tmp_path / "out")]
    done = two_ranks(argv, tmp_path / "torchrun")
    assert done.returncode != 0
    assert error_lines(done.stderr) == [f"error (rank 1): {INJECTED}"], done.stderr[-3000:]


def two_processes() -> Dist:
    return Dist(rank=1, world_size=2, device=torch.device("cpu"))


def test_rank_errors_marks_a_rank_s_refusal_and_keeps_the_errors_every_rank_raises_alike():
    with pytest.raises(RankFailed, match="bad batch"), rank_errors(two_processes()):
        raise ValueError("bad batch")
    with pytest.raises(RankFailed, match="'label'"), rank_errors(two_processes()):
        raise KeyError("label")
    with pytest.raises(TrainingDiverged), rank_errors(two_processes()):
        raise TrainingDiverged("loss NaN")
    one = Dist(rank=0, world_size=1, device=torch.device("cpu"))
    with pytest.raises(ValueError) as caught, rank_errors(one):
        raise ValueError("bad batch")
    assert type(caught.value) is ValueError  # one process: printed as before


def test_the_trainers_command_prints_a_rank_s_refusal_on_that_rank(monkeypatch, capsys):
    from training.cli import run_trainer

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")

    def train():
        raise RankFailed(INJECTED)

    assert run_trainer(train) == 2
    assert capsys.readouterr().err.splitlines() == [f"error (rank 1): {INJECTED}"]
