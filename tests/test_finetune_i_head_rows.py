"""``--finetune`` onto data whose classes differ from the checkpoint's labels: the head's rows follow
the class names. Kept by position, a/b/c finetuned onto b/c/d started b with a's row and c with b's
(the log said no tensor was new), and a/b/c onto a/c threw both trained rows away."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from training import classify_loop
from training.checkpoint import make_checkpoint, save_checkpoint
from training.classify_config import TrainConfig
from training.classify_finetune import finetune_classifier
from training.models import build_model

HEADS = {"lenet": "classifier.5", "nin": "classifier.2"}  # a linear head, and a convolution's


def checkpoint(path: Path, name: str, labels: list[str]) -> dict[str, torch.Tensor]:
    """A random-init ``name`` of ``labels`` saved as a classifier checkpoint; returns its weights."""
    torch.manual_seed(1)
    args = {"num_classes": len(labels), "in_channels": 1}
    model = build_model(name, **args)
    preprocessing = {"input_size": [16, 16], "channels": 1, "mean": [0.5], "std": [0.25]}
    ckpt = make_checkpoint(
        task="classify",
        model_name=name,
        model_args=args,
        model=model,
        train_config={},
        metrics={},
        preprocessing=preprocessing,
        labels=labels,
    )
    save_checkpoint(ckpt, path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def finetuned(path: Path, classes: list[str]) -> dict[str, torch.Tensor]:
    config = TrainConfig(finetune=str(path), channels=1, device="cpu")
    torch.manual_seed(0)
    _, _, module = finetune_classifier(config, len(classes), 1, classes)
    return module.state_dict()


@pytest.mark.parametrize("name", sorted(HEADS))
def test_a_class_set_of_the_same_count_keeps_the_rows_of_the_classes_it_shares_by_name(tmp_path, name):
    held = checkpoint(tmp_path / "src.pt", name, ["a", "b", "c"])
    state = finetuned(tmp_path / "src.pt", ["b", "c", "d"])
    for suffix in ("weight", "bias"):
        key = f"{HEADS[name]}.{suffix}"
        assert torch.equal(state[key][:2], held[key][1:]), key  # b and c: their own trained rows
    weight = f"{HEADS[name]}.weight"
    assert not torch.equal(state[weight][2], held[weight][0])  # d: a new row, not a's (biases start at 0)


def test_a_reordered_class_list_moves_each_row_with_its_class(tmp_path):
    held = checkpoint(tmp_path / "src.pt", "nin", ["a", "b", "c"])
    state = finetuned(tmp_path / "src.pt", ["c", "a", "b"])
    weight = f"{HEADS['nin']}.weight"
    assert torch.equal(state[weight], held[weight][[2, 0, 1]])


def test_fewer_classes_keep_their_trained_rows_rather_than_a_new_head(tmp_path):
    held = checkpoint(tmp_path / "src.pt", "lenet", ["a", "b", "c"])
    state = finetuned(tmp_path / "src.pt", ["a", "c"])
    for suffix in ("weight", "bias"):
        key = f"{HEADS['lenet']}.{suffix}"
        assert torch.equal(state[key], held[key][[0, 2]]), key


def test_the_same_classes_load_every_tensor_as_the_checkpoint_has_it(tmp_path):
    held = checkpoint(tmp_path / "src.pt", "lenet", ["a", "b", "c"])
    state = finetuned(tmp_path / "src.pt", ["a", "b", "c"])
    assert all(torch.equal(state[k], v) for k, v in held.items())


def test_the_training_run_passes_its_datas_class_names_to_the_finetune(tmp_path):
    held = checkpoint(tmp_path / "src.pt", "lenet", ["a", "b", "c"])
    config = TrainConfig(finetune=str(tmp_path / "src.pt"), channels=1, device="cpu", seed=0)
    data = SimpleNamespace(classes=["b", "c", "d"], channels=1)
    _, _, module = classify_loop._model(config, data, None)
    key = f"{HEADS['lenet']}.weight"
    assert torch.equal(module.state_dict()[key][:2], held[key][1:])
