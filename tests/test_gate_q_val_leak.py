"""A classifier's int8 gate runs on the run's validation split, rebuilt from the checkpoint's ``data``:
a dataset with images added since training reshuffles the split, and its "validation" images were
then partly training images, the gate's accuracy measured on them without a word."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export import __main__ as export_main
from tests.classifier_exports import write_checkpoint
from training.data.image_formats import DatasetError
from training.data.images import DataSpec, data_info, load_splits, make_splits


def _image(path: Path, rng: np.random.Generator) -> None:
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(path)


@pytest.fixture
def grown(tmp_path: Path) -> tuple[dict, Path]:
    """The data a run recorded (``data_info``), and its folder with one image added since."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            _image(root / name / f"{i}.png", rng)
    spec = DataSpec("folder", str(root), image_size=32, channels=1)
    data = data_info(spec, *make_splits(spec))
    _image(root / "a" / "new.png", rng)
    return data, root


def test_the_recorded_data_rebuilds_its_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(5):
            _image(tmp_path / name / f"{i}.png", rng)
    spec = DataSpec("folder", str(tmp_path), image_size=32, channels=1)
    train, val = load_splits(data_info(spec, *make_splits(spec)))
    assert (len(train), len(val)) == (8, 2)


def test_data_with_images_added_since_training_is_refused_as_its_split(grown) -> None:
    data, _ = grown
    with pytest.raises(DatasetError, match="11 train / 2 val images where the run had 10 / 2"):
        load_splits(data)


def test_the_int8_gate_does_not_measure_accuracy_on_a_reshuffled_validation_split(grown, tmp_path) -> None:
    data, root = grown
    checkpoint = write_checkpoint(tmp_path / "ckpt", "lenet", data)
    repository = tmp_path / "repo"
    argv = [str(checkpoint), "--precisions", "fp32,int8", "--tensorrt", "off", "--no-progress"]
    assert export_main.main([*argv, "--repository", str(repository), "--data-path", str(root)]) == 0
    parity = json.loads((repository / "lenet_int8" / "kiln.json").read_text())["parity"]
    assert parity["data"] == "random" and "top1_drop_points" not in parity["int8_gate"]
