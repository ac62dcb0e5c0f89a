"""Export on a machine where the training data is elsewhere: ``--data-path`` names where it is now, so
the parity checks and the int8 gate run on the run's own validation split rather than random images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export import __main__ as export_main
from export.pipeline import moved_data
from tests.classifier_exports import write_checkpoint
from training.data.images import DataSpec, data_info, make_splits


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _parity(repository: Path, entry: str) -> dict:
    return json.loads((repository / entry / "kiln.json").read_text())["parity"]


def test_a_moved_dataset_named_by_data_path_gates_int8_on_the_runs_validation_split(tmp_path: Path) -> None:
    """Without the flag the split was unavailable (the recorded path is gone) and the int8 entry was
    gated on random images, with nothing to give export the data where it now is."""
    trained_on = _folder(tmp_path / "data")
    spec = DataSpec("folder", str(trained_on), image_size=32, channels=1)
    data = data_info(spec, *make_splits(spec))
    checkpoint = write_checkpoint(tmp_path / "ckpt", "lenet", data)
    moved = tmp_path / "elsewhere" / "data"
    moved.parent.mkdir()
    shutil.move(trained_on, moved)
    argv = [str(checkpoint), "--precisions", "fp32,int8", "--tensorrt", "off", "--no-progress"]

    assert export_main.main([*argv, "--repository", str(tmp_path / "guessed")]) == 0
    assert _parity(tmp_path / "guessed", "lenet_int8")["int8_gate"]["data"] == "random"

    assert export_main.main([*argv, "--repository", str(tmp_path / "real"), "--data-path", str(moved)]) == 0
    parity = _parity(tmp_path / "real", "lenet_int8")
    assert parity["data"] == "validation split" and "top1_drop_points" in parity["int8_gate"]
    assert parity["validation_images"] == data["n_val"]
    assert json.loads((tmp_path / "real" / "lenet" / "kiln.json").read_text())["parity"]["data"] == (
        "validation split"
    )


def test_a_data_path_that_does_not_exist_is_refused_and_a_translators_corpus_is_its_train_configs():
    with pytest.raises(ValueError, match="--data-path /nowhere/at/all: no such file or directory"):
        moved_data({"task": "classify", "data": {}}, "/nowhere/at/all")
    translator = {"task": "translate", "train_config": {"corpus": "tsv", "data_path": "/old/pairs.tsv"}}
    assert moved_data(translator, "/")["train_config"] == {"corpus": "tsv", "data_path": "/"}
    assert translator["train_config"]["data_path"] == "/old/pairs.tsv"  # the checkpoint itself unchanged
    assert moved_data(translator, None) is translator
