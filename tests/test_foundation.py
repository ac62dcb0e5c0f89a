"""The foundation every stage relies on: registry rules, the checkpoint contract, schedules, tracking."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from training import checkpoint as ckpt_mod
from training.models import registry
from training.optim import build_optimizer, build_scheduler, lr_multiplier
from training.tracking import EarlyStopping, MetricsLogger, plot_curves, read_metrics


@dataclass
class _TinyConfig:
    num_classes: int = 3
    hidden: int = 4


class _Tiny(nn.Module):
    def __init__(self, cfg: _TinyConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(2, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 2) -> (B, classes)
        return self.out(torch.relu(self.fc(x)))


@pytest.fixture
def tiny_registered():
    """Register a throwaway model and remove it afterwards so the real registry stays clean."""
    name = "_test_tiny"
    registry.register_model(name, task="classify", config=_TinyConfig)(_Tiny)
    yield name
    registry._REGISTRY.pop(name, None)


def test_registering_a_duplicate_name_is_refused(tiny_registered):
    def another(config: _TinyConfig) -> nn.Module:
        return _Tiny(config)

    with pytest.raises(ValueError, match=rf"already registered \(by {__name__}\)"):
        registry.register_model(tiny_registered, task="classify", config=_TinyConfig)(another)
    # the same builder of the same module again is a reload (importlib.reload), not a clash
    registry.register_model(tiny_registered, task="classify", config=_TinyConfig)(_Tiny)
    assert registry.get_entry(tiny_registered).builder is _Tiny


def test_unknown_task_and_non_dataclass_config_are_refused():
    with pytest.raises(ValueError, match="unknown task"):
        registry.register_model("_x", task="detect", config=_TinyConfig)
    with pytest.raises(TypeError, match="dataclass"):
        registry.register_model("_x", task="classify", config=dict)


def test_unknown_constructor_arguments_name_the_accepted_ones(tiny_registered):
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['depth'\]"):
        registry.build_model(tiny_registered, depth=3)


def test_unknown_model_name_lists_the_registered_models():
    with pytest.raises(KeyError, match="registered models"):
        registry.build_model("no_such_model")


def test_list_models_filters_by_task(tiny_registered):
    assert tiny_registered in registry.list_models("classify")
    assert tiny_registered not in registry.list_models("translate")


def test_checkpoint_round_trip_rebuilds_identical_outputs_with_weights_only(tiny_registered, tmp_path):
    model = registry.build_model(tiny_registered, hidden=5)
    ckpt = ckpt_mod.make_checkpoint(
        task="classify",
        model_name=tiny_registered,
        model_args={"hidden": 5},
        model=model,
        train_config={"epochs": 1, "shape": (1, 2)},
        metrics={"val_accuracy": 0.5},
        preprocessing={"input_size": (8, 8), "channels": 1, "mean": [0.1], "std": [0.2]},
        labels=["a", "b", "c"],
    )
    path = ckpt_mod.save_checkpoint(ckpt, tmp_path / "tiny.pt")
    raw = torch.load(path, weights_only=True)  # the contract: no pickled classes
    # a model registered outside the zoo: the checkpoint names its module, for a refusal to name
    assert raw["model"] == {"name": tiny_registered, "args": {"hidden": 5}, "module": __name__}
    rebuilt = ckpt_mod.rebuild_model(ckpt_mod.load_checkpoint(path))
    x = torch.randn(4, 2)
    assert torch.equal(model.eval()(x), rebuilt(x))
    assert not rebuilt.training


def test_loading_a_file_that_is_not_a_checkpoint_says_why(tmp_path):
    with pytest.raises(ckpt_mod.CheckpointError, match="no such checkpoint"):
        ckpt_mod.load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(ckpt_mod.CheckpointError, match="not a PyTorch checkpoint"):
        ckpt_mod.load_checkpoint(tmp_path / "garbage.pt")
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # a module, not its weights
    with pytest.raises(
        ckpt_mod.CheckpointError, match=r"weights_only=True\) \(Unsupported global: .*Linear\)"
    ):
        ckpt_mod.load_checkpoint(tmp_path / "pickled.pt")
    torch.save({"task": "classify"}, tmp_path / "partial.pt")
    with pytest.raises(ckpt_mod.CheckpointError, match="missing key"):
        ckpt_mod.load_checkpoint(tmp_path / "partial.pt")


def test_checkpoint_task_must_match_the_registered_family(tiny_registered):
    model = registry.build_model(tiny_registered)
    ckpt = ckpt_mod.make_checkpoint(
        task="translate", model_name=tiny_registered, model_args={}, model=model, train_config={}, metrics={}
    )
    with pytest.raises(ckpt_mod.CheckpointError, match="is a classify model"):
        ckpt_mod.rebuild_model(ckpt)


def test_warmup_then_cosine_reaches_zero_at_the_end():
    kw = {"schedule": "cosine", "warmup_steps": 10, "total_steps": 110}
    assert lr_multiplier(0, **kw) == pytest.approx(0.1)
    assert lr_multiplier(9, **kw) == pytest.approx(1.0)
    assert lr_multiplier(60, **kw) == pytest.approx(0.5)
    assert lr_multiplier(110, **kw) == pytest.approx(0.0, abs=1e-12)


def test_step_and_inverse_sqrt_schedules_decay_as_documented():
    assert lr_multiplier(25, schedule="step", warmup_steps=0, total_steps=100, step_size=10) == pytest.approx(
        0.01
    )
    assert lr_multiplier(399, schedule="inverse_sqrt", warmup_steps=100, total_steps=0) == pytest.approx(0.5)


def test_optimizer_skips_weight_decay_on_biases_and_scheduler_steps_per_iteration():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    opt = build_optimizer(model, "nesterov", lr=0.1, weight_decay=5e-4)
    decays = sorted(g["weight_decay"] for g in opt.param_groups)
    assert decays == [0.0, 5e-4]
    assert opt.param_groups[0]["nesterov"]
    sched = build_scheduler(opt, schedule="cosine", warmup_steps=2, total_steps=4)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(model, "lion", lr=0.1)


def test_metrics_are_json_lines_and_curves_are_a_png(tmp_path):
    logger = MetricsLogger(tmp_path / "m.jsonl")
    for epoch in range(1, 4):
        logger.log({"epoch": epoch, "train_loss": 1.0 / epoch, "val_accuracy": 0.3 * epoch})
    records = read_metrics(tmp_path / "m.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0])["train_loss"] == 1.0
    png = plot_curves(records, tmp_path / "c.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_early_stopping_waits_patience_epochs_without_improvement():
    stopper = EarlyStopping(patience=2, mode="max")
    assert [stopper.step(v) for v in (0.5, 0.6, 0.6, 0.55)] == [False, False, False, True]
    assert stopper.best == 0.6
