"""A classifier of the user's own (``--models-from``) with a trainable parameter its training loss does not
use (a second head for other work) trains in one process, but under torchrun DistributedDataParallel
waits for every parameter's gradient: the second step stopped every rank with torch's traceback
("Expected to have finished reduction in the prior iteration ... pass find_unused_parameters=True to
DistributedDataParallel"), advice no flag of the trainer reaches. The run now stops after its first
step with one line naming the parameters and what to do; frozen, they train under torchrun."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.torchrun import two_ranks
from training.runtime import Dist, check_all_trained

MODELS = """
from dataclasses import dataclass

from torch import nn

from training.models import register_model
from training.models.layers import ClassifierConfig


@dataclass
class TwoHeadConfig(ClassifierConfig):
    width: int = 8
    freeze_embedding: bool = False


class TwoHead(nn.Module):
    def __init__(self, config):
        super().__init__()
        w = config.width
        self.features = nn.Sequential(nn.Conv2d(config.in_channels, w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(4 * w, config.num_classes)
        self.embedding_head = nn.Linear(4 * w, 16)  # the user's retrieval code's, not the classifier's
        self.embedding_head.requires_grad_(not config.freeze_embedding)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


@register_model("ddp_j_twohead", task="classify", config=TwoHeadConfig)
def twohead(config):
    return TwoHead(config)
"""


def two_rank_run(tmp_path, *extra: str):
    (tmp_path / "ddp_j_mynets.py").write_text(MODELS, encoding="utf-8")
    argv = ["-m", "training.classify", "--models-from", "ddp_j_mynets", "--model", "ddp_j_twohead"]
    argv += ["--epochs", "1", "--limit-train", "64", "--limit-val", "16", "--image-size", "16"]
    argv += ["--batch-size", "16", "--no-progress", "--device", "cpu", "--output-dir", str(tmp_path / "out")]
    return two_ranks([*argv, *extra], tmp_path / "torchrun", {"PYTHONPATH": str(tmp_path)})


@pytest.mark.timeout(60)
def test_a_parameter_the_loss_does_not_use_stops_a_torchrun_run_in_one_line_naming_it(tmp_path):
    done = two_rank_run(tmp_path)
    assert done.returncode != 0 and "Expected to have finished reduction" not in done.stderr, done.stderr[
        -3000:
    ]
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(
        "error: the model's parameter(s) embedding_head.weight, embedding_head.bias get no gradient from "
        "the training loss"
    )
    assert "freeze them (requires_grad_(False))" in lines[0]


@pytest.mark.timeout(60)
def test_the_same_parameters_frozen_train_under_torchrun(tmp_path):
    done = two_rank_run(tmp_path, "--model-arg", "freeze_embedding=True")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "ddp_j_twohead.pt").is_file()


def _stepped(model: nn.Module) -> nn.Module:
    model.zero_grad(set_to_none=True)
    model[0](torch.ones(2, 3)).sum().backward()  # the second layer is not used
    return model


def test_only_a_run_of_several_processes_with_unused_trainable_parameters_is_refused():
    model = _stepped(nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2)))
    several, one = (Dist(0, 2, torch.device("cpu")), Dist(0, 1, torch.device("cpu")))
    with pytest.raises(ValueError, match=r"^the model's parameter\(s\) 1\.weight, 1\.bias get no gradient"):
        check_all_trained(model, several)
    check_all_trained(model, one)  # one process trains it: those weights keep their values
    model[1].requires_grad_(False)
    check_all_trained(model, several)
    check_all_trained(_stepped(nn.Sequential(nn.Linear(3, 3))), several)


def test_many_unused_parameters_are_named_five_and_counted():
    model = _stepped(nn.Sequential(nn.Linear(3, 2), *(nn.Linear(2, 2) for _ in range(4))))
    with pytest.raises(ValueError, match=r"1\.weight, 1\.bias, 2\.weight, 2\.bias, 3\.weight and 3 more get"):
        check_all_trained(model, Dist(1, 2, torch.device("cpu")))
