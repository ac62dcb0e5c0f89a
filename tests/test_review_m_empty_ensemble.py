"""An ensemble entry whose ``ensemble_scheduling`` block is written but holds no step (a stub left to
fill in): Triton refuses its load ("must specify 'step' for ensemble"), and the gateway's repository
loaded it without a word, its requests then told only that the platform needs the triton backend."""

from __future__ import annotations

from pathlib import Path

from serving.execution.repository import Repository

CONFIG = """name: "stub"
platform: "ensemble"
max_batch_size: 8
input [ { name: "a" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
"""

STEP = (
    'step [ { model_name: "inner" model_version: -1 input_map { key: "x" value: "a" } '
    'output_map { key: "z" value: "y" } } ]'
)


def _repository(root: Path, scheduling: str) -> Repository:
    (root / "stub" / "1").mkdir(parents=True)
    (root / "stub" / "config.pbtxt").write_text(CONFIG + scheduling + "\n", encoding="utf-8")
    return Repository(root)


def test_an_ensemble_block_without_a_step_fails_its_load_naming_the_field(tmp_path: Path) -> None:
    error = _repository(tmp_path, "ensemble_scheduling { }").errors["stub"]
    assert "ensemble_scheduling must have at least one step" in error
    assert str(tmp_path / "stub" / "config.pbtxt") in error


def test_an_ensemble_with_a_step_still_reads(tmp_path: Path) -> None:
    repository = _repository(tmp_path, f"ensemble_scheduling {{ {STEP} }}")
    assert repository.errors == {} and repository.entries["stub"].platform == "ensemble"
