"""Classifier shapes users pick beyond the demo's: a dataset of one class, and batches of one image that a
BatchNorm model cannot train on at the image size chosen, refused as one error line before training."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from training import classify


def write_folder(root, classes: tuple[str, ...], per_class: int = 3):
    """``per_class`` grey 12x12 images in ``root/<class>`` for each class."""
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_a_folder_of_one_class_is_refused_before_training_not_trained_into_a_constant_model(tmp_path, capsys):
    """One class trained with a loss of 0 at every step (softmax over one logit is 1), exported and served
    a model answering that class at score 1.0 whatever the image."""
    data = write_folder(tmp_path / "data", ("cat",))
    argv = ["--model", "lenet", "--dataset", "folder", "--data-path", str(data), "--image-size", "12"]
    argv += ["--epochs", "1", "--no-progress", "--device", "cpu", "--output-dir", str(tmp_path / "out")]
    assert classify.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "one class (cat); a classifier needs at least 2 classes" in err, err
    assert "Traceback" not in err and not (tmp_path / "out" / "lenet.pt").exists()


@pytest.mark.parametrize("flag", ["--batch-size", "--limit-train"])
def test_a_batch_of_one_a_batchnorm_model_cannot_train_at_this_size_is_refused_naming_the_fix(
    flag, tmp_path, capsys
):
    """resnet18 at 32x32 pools to 1x1 before its last BatchNorm: one image per batch used to stop the
    first step with PyTorch's "Expected more than 1 value per channel when training"."""
    argv = ["--model", "resnet18", "--image-size", "32", "--epochs", "1", "--no-progress", "--device", "cpu"]
    argv += [flag, "1", "--output-dir", str(tmp_path / "out")]
    assert classify.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} 1: resnet18 normalizes over the batch (BatchNorm)"), err
    assert f"use {flag} 2 or more, or --image-size 33 or more" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before any data was read or anything written


def test_a_batch_of_one_is_kept_where_the_model_takes_it(tmp_path):
    """lenet has no BatchNorm, and resnet18's last feature maps are 2x2 at 33x33: batches of one train."""
    from training.classify_config import TrainConfig
    from training.classify_resolve import resolve

    for model, size in (("lenet", 12), ("resnet18", 33)):
        config = resolve(
            TrainConfig(model=model, image_size=size, batch_size=1, limit_train=1, output_dir=str(tmp_path))
        )
        assert config.batch_size == 1 and config.limit_train == 1
