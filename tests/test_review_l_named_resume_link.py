"""A classifier run named ``runs/a`` in ``out`` resumed through a link to its resume state
(``--resume latest.resume.pt``) without ``--output-dir`` took the link's folder less ``runs`` for its
output directory and wrote ``./runs/a.*``, a second copy beside nothing of its own; the translator's
trainer takes the directory the state recorded where that is the state's (``resumed_output_dir``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from training import classify
from training.checkpoint import save_checkpoint
from training.classify_config import TrainConfig
from training.classify_resolve import resolve
from training.resume import resumed_metrics

STATE = {"epoch": 1, "model_name": "lenet", "model_args": {}, "model": {}, "optimizer": {}, "scheduler": {}}


def test_a_named_run_resumed_through_a_link_writes_over_its_own_files(tmp_path, monkeypatch):
    out = tmp_path / "out"
    saved = dataclasses.asdict(resolve(TrainConfig(model="lenet", output_dir=str(out), name="runs/a")))
    (out / "runs").mkdir(parents=True)
    state = save_checkpoint({**STATE, "data": {}, "train_config": saved}, out / "runs" / "a.resume.pt")
    monkeypatch.chdir(tmp_path)
    Path("latest.resume.pt").symlink_to(state)
    argv = ["--resume", "latest.resume.pt"]
    config = resolve(classify.config_from_args(classify.build_parser().parse_args(argv)))
    assert (Path(config.output_dir) / f"{config.name}.resume.pt").resolve() == state.resolve()


def test_the_metrics_of_a_run_resumed_through_a_link_are_those_beside_its_state(tmp_path, monkeypatch):
    """Looked for beside the link, they were not found: the resumed run began its metrics file anew."""
    (tmp_path / "out" / "runs").mkdir(parents=True)
    state = tmp_path / "out" / "runs" / "a.resume.pt"
    state.write_bytes(b"")
    (tmp_path / "out" / "runs" / "a.metrics.jsonl").write_text('{"epoch": 1}\n')
    monkeypatch.chdir(tmp_path)
    Path("latest.resume.pt").symlink_to(state)
    assert resumed_metrics("latest.resume.pt").resolve() == (state.parent / "a.metrics.jsonl").resolve()
