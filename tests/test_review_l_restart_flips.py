"""A classifier run resumed with ``--no-augment`` over flips it had trained with (accepted: the flags
given say nothing of flips) holds ``hflip`` and ``augment=False`` in its resolved config; torchrun's
restart of it (``--max-restarts``) resolves that config again, and ``check_augment_flags`` read the
inherited flips as a given ``--hflip``: the restart failed on "--hflip with augmentation off"."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from training import classify, classify_loop
from training.checkpoint import save_checkpoint
from training.classify_config import TrainConfig, augment_config
from training.classify_resolve import resolve

STATE = {"epoch": 1, "model_name": "lenet", "model_args": {}, "model": {}, "optimizer": {}, "scheduler": {}}


def _state(path: Path, train_config: TrainConfig) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint({**STATE, "data": {}, "train_config": dataclasses.asdict(train_config)}, path)


def test_a_restarted_attempt_of_a_run_resumed_without_augmentation_keeps_going(tmp_path, monkeypatch):
    out = tmp_path / "run"
    resume = _state(
        out / "lenet.resume.pt", resolve(TrainConfig(model="lenet", output_dir=str(out), hflip=True))
    )
    argv = ["--resume", str(resume), "--no-augment"]
    first = resolve(classify.config_from_args(classify.build_parser().parse_args(argv)))
    assert (first.hflip, first.augment) == (True, False)  # accepted: --no-augment over the run's flips
    _state(out / "lenet.resume.pt", first)  # what the first attempt's epoch wrote before it died
    monkeypatch.setattr(classify_loop, "restart_resume", lambda path, d: path)
    again = classify_loop.restarted(first, None)
    assert Path(again.resume) == out / "lenet.resume.pt"
    assert (again.hflip, again.augment) == (True, False)
    assert augment_config(again).hflip is False  # no flips ran, none run after the restart either
