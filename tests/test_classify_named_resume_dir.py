"""A classifier run named with a folder (``--name runs/a``) keeps its files under
``--output-dir/runs/a.*``; resumed from ``out/runs/a.resume.pt`` without ``--output-dir`` it took
``out/runs`` for it and wrote ``out/runs/runs/a.*``, beside the run it continued, whose resume state and
checkpoint it never replaced (the translator's trainer had the same fault)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from training import classify
from training.checkpoint import save_checkpoint
from training.classify_config import TrainConfig
from training.classify_resolve import resolve


def _resume_file(out: Path, name: str) -> Path:
    saved = dataclasses.asdict(resolve(TrainConfig(model="lenet", output_dir=str(out), name=name)))
    state = {
        "epoch": 1,
        "model_name": "lenet",
        "model_args": {},
        "model": {},
        "optimizer": {},
        "scheduler": {},
    }
    path = out / f"{name}.resume.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint({**state, "data": {}, "train_config": saved}, path)


def _resolved(argv: list[str]) -> TrainConfig:
    return resolve(classify.config_from_args(classify.build_parser().parse_args(argv)))


def test_a_run_named_with_a_folder_resumes_in_the_output_dir_that_holds_its_files(tmp_path):
    out = tmp_path / "out"
    config = _resolved(["--resume", str(_resume_file(out, "runs/a"))])
    assert config.name == "runs/a"
    assert Path(config.output_dir) == out  # its files: out/runs/a.*, not out/runs/runs/a.*


def test_a_run_named_without_a_folder_resumes_beside_its_resume_state(tmp_path):
    out = tmp_path / "out"
    config = _resolved(["--resume", str(_resume_file(out, "b"))])
    assert Path(config.output_dir) == out
