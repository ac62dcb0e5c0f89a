"""``--hflip`` where augmentation is off: refused in one line, not dropped while the run records it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from training import classify, classify_config
from training.checkpoint import save_checkpoint
from training.classify_config import TrainConfig
from training.classify_resolve import resolve


def _resolved(argv: list[str]) -> TrainConfig:
    return resolve(classify.config_from_args(classify.build_parser().parse_args(argv)))


def _resume_file(out: Path, **train_config) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    saved = dataclasses.asdict(resolve(TrainConfig(model="lenet", output_dir=str(out), **train_config)))
    state = {
        "epoch": 1,
        "model_name": "lenet",
        "model_args": {},
        "model": {},
        "optimizer": {},
        "scheduler": {},
    }
    return save_checkpoint({**state, "data": {}, "train_config": saved}, out / "lenet.resume.pt")


def test_hflip_with_no_augment_is_refused_naming_both_flags(tmp_path):
    with pytest.raises(ValueError, match=r"--hflip with augmentation off \(--no-augment\)"):
        _resolved(["--model", "lenet", "--output-dir", str(tmp_path), "--no-augment", "--hflip"])


def test_hflip_on_resuming_a_run_without_augmentation_is_refused(tmp_path):
    resume = _resume_file(tmp_path / "run", augment=False)
    with pytest.raises(ValueError, match="trained with --no-augment"):
        _resolved(["--resume", str(resume), "--output-dir", str(tmp_path / "out"), "--hflip"])


def test_hflip_alone_adds_flips_to_the_datasets_augmentation(tmp_path):
    config = _resolved(["--model", "lenet", "--output-dir", str(tmp_path), "--hflip"])
    assert classify_config.augment_config(config).hflip is True
    assert classify_config.augment_config(config).rotation_deg > 0


def test_no_augment_over_a_resumed_runs_flips_turns_them_off(tmp_path):
    resume = _resume_file(tmp_path / "run", dataset="digits", hflip=True)
    config = _resolved(["--resume", str(resume), "--output-dir", str(tmp_path / "out"), "--no-augment"])
    assert classify_config.augment_config(config).hflip is False
