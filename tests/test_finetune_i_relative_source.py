"""A ``--finetune`` checkpoint named by a relative path: the run records it absolute, as it does its
``--data-path``. Recorded as given, the checkpoint's lineage named a file relative to a directory it
did not say, and the run's ``--resume`` from another directory with that very file given (relative to
there) was refused as having started from another checkpoint."""

from __future__ import annotations

from pathlib import Path

from tests.repo_fixtures import _tiny_checkpoint
from training import classify
from training.checkpoint import load_checkpoint
from training.classify_config import TrainConfig
from training.classify_resolve import resolve

TINY = {"image_size": 16, "limit_train": 32, "limit_val": 16, "batch_size": 16, "progress": False}


def train(out: Path, **settings) -> Path:
    return classify.train(
        TrainConfig(model="lenet", epochs=1, device="cpu", output_dir=str(out), **TINY, **settings)
    )


def test_the_checkpoint_records_the_finetune_source_absolute_and_its_resume_takes_it_from_elsewhere(
    tmp_path, monkeypatch
):
    _tiny_checkpoint(tmp_path / "source" / "lenet.pt", "lenet", 0)
    monkeypatch.chdir(tmp_path)
    tuned = train(tmp_path / "tuned", finetune="source/lenet.pt")
    assert load_checkpoint(tuned)["train_config"]["finetune"] == str(tmp_path / "source" / "lenet.pt")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    config = resolve(TrainConfig(resume="../tuned/lenet.pt", finetune="../source/lenet.pt", epochs=2))
    assert config.finetune == str(tmp_path / "source" / "lenet.pt")
