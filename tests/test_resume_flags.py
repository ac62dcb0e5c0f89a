"""What a resumed classifier run takes from the interrupted run's file: the choices it was made with,
``--no-augment`` among them (a resumed run that turned augmentation back on would train its last
epochs on other data than its first)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from training import classify, classify_config
from training.checkpoint import save_checkpoint
from training.classify_config import TrainConfig
from training.classify_resolve import resolve
from training.data.augment import AugmentConfig

# a lenet run's resume state after its first epoch, without its data and train_config (added per test)
LENET_STATE = {
    "epoch": 1,
    "model_name": "lenet",
    "model_args": {},
    "model": {},
    "optimizer": {},
    "scheduler": {},
}


def resume_file(out: Path, **train_config) -> Path:
    """A lenet run's resume state in ``out``, as a run made with ``train_config`` wrote it (its name's
    ``<name>.resume.pt``, ``lenet.resume.pt`` by default): what a resumed run reads of it."""
    saved = dataclasses.asdict(resolve(TrainConfig(model="lenet", output_dir=str(out), **train_config)))
    path = out / f"{train_config.get('name') or 'lenet'}.resume.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint({**LENET_STATE, "data": {}, "train_config": saved}, path)


def resolved(argv: list[str]) -> TrainConfig:
    return resolve(classify.config_from_args(classify.build_parser().parse_args(argv)))


@pytest.mark.parametrize(
    ("first_run", "resumed_flags", "augment"),
    [
        ({"augment": False}, [], False),
        ({"augment": False}, ["--augment"], True),
        ({}, [], True),
        ({}, ["--no-augment"], False),
    ],
)
def test_a_resumed_run_keeps_the_interrupted_runs_augmentation_unless_told(
    tmp_path, first_run, resumed_flags, augment
):
    resume = resume_file(tmp_path / "run", **first_run)
    config = resolved(["--resume", str(resume), "--output-dir", str(tmp_path / "out"), *resumed_flags])
    assert config.augment is augment
    assert (classify_config.augment_config(config) == AugmentConfig.none()) is not augment


@pytest.mark.parametrize(("flags", "augment"), [([], True), (["--no-augment"], False), (["--augment"], True)])
def test_a_new_run_augments_unless_told_not_to(tmp_path, flags, augment):
    config = resolved(["--model", "lenet", "--output-dir", str(tmp_path), *flags])
    assert config.augment is augment
