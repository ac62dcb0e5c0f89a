"""Finetuning as an ML engineer does it after the demo: a trained checkpoint, a folder of their own
images (other classes, colour, other sizes, a name in UTF-8), then export and serve; and what must be
refused in one line rather than a traceback, ignored silently, or trained from scratch."""

from __future__ import annotations

import base64
import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.repo_fixtures import _tiny_checkpoint
from training import classify, classify_finetune, classify_loop
from training.checkpoint import load_checkpoint, save_checkpoint
from training.classify_config import TrainConfig
from training.data.image_formats import DatasetError
from training.data.images import DataSpec, make_splits
from training.models import build_model

CLASSES = ("cat", "dog", "émeu")  # sorted by code point: "é" after every ASCII letter


def write_colour_folder(root: Path, classes=CLASSES, per_class: int = 4) -> Path:
    """RGB images of other sizes than the model's, one colour a class, so a class is learnable."""
    rng = np.random.default_rng(0)
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 40, (20 + i, 24, 3), dtype=np.uint8)
            pixels[..., index % 3] += 200
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def finetune_config(source: Path, data: Path, out: Path, **overrides) -> TrainConfig:
    base = {
        "finetune": str(source),
        "dataset": "folder",
        "data_path": str(data),
        "image_size": 16,
        "epochs": 1,
        "batch_size": 8,
        "output_dir": str(out),
        "progress": False,
        "device": "cpu",
    }
    return TrainConfig(**{**base, **overrides})


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A 1-channel lenet checkpoint of 3 classes at 16x16 (random weights: nothing here needs them trained)."""
    return _tiny_checkpoint(tmp_path / "source" / "lenet.pt", "lenet", 0)


def test_a_finetune_on_a_colour_folder_is_exported_and_served_with_the_folders_labels_in_utf8(
    source: Path, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from export.pipeline import export_checkpoint
    from serving.app import create_app
    from serving.settings import Settings

    data = write_colour_folder(tmp_path / "imgs", classes=(*CLASSES, "zèbre"))
    path = classify.train(finetune_config(source, data, tmp_path / "ft", name="animals"))
    ckpt = load_checkpoint(path)
    assert ckpt["labels"] == ["cat", "dog", "zèbre", "émeu"] and ckpt["model"]["args"]["num_classes"] == 4
    assert ckpt["preprocessing"]["input_size"] == [16, 16] and ckpt["preprocessing"]["channels"] == 1
    repository = tmp_path / "repo"
    export_checkpoint(path, repository, tensorrt="off", max_batch_size=4, name="animals")
    assert (repository / "animals" / "labels.txt").read_bytes() == "cat\ndog\nzèbre\némeu\n".encode()
    buffer = io.BytesIO()
    Image.open(next((data / "émeu").iterdir())).save(buffer, "PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    with TestClient(create_app(Settings(model_repository=repository, grpc_port=0))) as client:
        answer = client.post("/v1/models/animals/classify", json={"images": [image], "top_k": 4})
    assert answer.status_code == 200, answer.text
    assert "émeu".encode() in answer.content  # UTF-8 on the wire, not \\u escapes of another encoding
    assert {p["label"] for p in answer.json()["predictions"][0]} == set(ckpt["labels"])


def test_a_finetune_checkpoint_with_an_argument_its_models_config_lacks_is_one_error_line(
    source: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    ckpt = load_checkpoint(source)
    ckpt["model"]["args"]["old_knob"] = 1  # a field an older version of the model had
    older = save_checkpoint(ckpt, tmp_path / "older.pt")
    monkeypatch.setattr(classify_loop, "run", lambda config: pytest.fail("read the data"))
    assert classify.main(["--finetune", str(older), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "its lenet arguments ['old_knob'] are not fields of lenet's config" in err, err
    assert "Traceback" not in err


def test_a_finetune_checkpoint_without_preprocessing_trains_on_its_models_channels(
    source: Path, tmp_path: Path
) -> None:
    ckpt = load_checkpoint(source)
    del ckpt["preprocessing"]  # the contract's required keys do not include it
    bare = save_checkpoint(ckpt, tmp_path / "bare.pt")
    data = write_colour_folder(tmp_path / "imgs")
    path = classify.train(finetune_config(bare, data, tmp_path / "ft"))
    assert load_checkpoint(path)["preprocessing"]["channels"] == 1  # the model's in_channels


def test_a_model_arg_that_changes_every_shape_is_refused_rather_than_trained_from_scratch(
    source: Path,
) -> None:
    """A head bias (the same class count) and BatchNorm's step counters match in any architecture."""
    wider = build_model("lenet", num_classes=3, in_channels=1, width_mult=2.0)
    with pytest.raises(ValueError, match="none of the checkpoint's weights fits this model's shapes"):
        classify_finetune.load_matching_weights(wider, load_checkpoint(source)["state_dict"])


def test_finetuning_a_grey_checkpoint_on_three_channels_adapts_its_first_layer_not_reinitialises_it(
    source: Path,
) -> None:
    state = load_checkpoint(source)["state_dict"]
    grey = build_model("lenet", num_classes=3, in_channels=1).eval()
    grey.load_state_dict(state)
    colour = build_model("lenet", num_classes=3, in_channels=3).eval()
    adapted = classify_finetune.adapt_input_channels(colour, state, 1, 3)
    assert classify_finetune.load_matching_weights(colour, adapted) == []
    image = torch.rand(2, 1, 16, 16)
    with torch.no_grad():  # a grey image as RGB: the pretrained first layer's response, so the same logits
        torch.testing.assert_close(colour(image.expand(-1, 3, -1, -1)), grey(image))
    back = classify_finetune.adapt_input_channels(grey, colour.state_dict(), 3, 1)
    assert torch.allclose(back["features.0.0.weight"], state["features.0.0.weight"])


def test_resume_with_a_finetune_other_than_the_interrupted_runs_is_refused_not_ignored(
    source: Path, tmp_path: Path, capsys
) -> None:
    data = write_colour_folder(tmp_path / "imgs")
    first = classify.train(finetune_config(source, data, tmp_path / "ft", augment=False))
    other = _tiny_checkpoint(tmp_path / "other" / "lenet.pt", "lenet", 1)
    argv = ["--resume", str(first), "--finetune", str(other), "--epochs", "2", "--no-progress"]
    assert classify.main(argv) == 2
    err = capsys.readouterr().err
    assert f"--finetune {other} with --resume {first}" in err and f"started from --finetune {source}" in err
    assert classify.main([*argv[:3], str(source), *argv[4:]]) == 0  # the run's own: it resumes
    assert load_checkpoint(first)["metrics"]["epochs"] == 2


def test_the_help_says_where_an_unset_channels_comes_from_on_finetune_and_resume(capsys) -> None:
    with pytest.raises(SystemExit):
        classify.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "on --finetune, the checkpoint's; on --resume, the interrupted run's" in text


def test_a_class_too_small_to_be_validated_is_named_in_a_warning(tmp_path: Path, caplog) -> None:
    data = write_colour_folder(tmp_path / "imgs")
    for extra in sorted((data / "dog").iterdir())[1:]:
        extra.unlink()  # one image left: it goes to training, none to validation
    with caplog.at_level(logging.WARNING, logger="training.data.images"):
        train, val = make_splits(DataSpec("folder", str(data), image_size=8))
    assert "dog" in train.classes and 1 not in val.labels.tolist()
    assert "no validation image of 1 class(es), so val accuracy leaves them out: dog" in caplog.text


@pytest.mark.parametrize("name", ["c\u2028t", os.fsdecode(b"caf\xe9")])
def test_a_class_folder_name_no_label_can_be_is_refused_before_training(tmp_path: Path, name: str) -> None:
    data = write_colour_folder(tmp_path / "imgs")
    try:
        (data / "cat").rename(data / name)
    except (OSError, UnicodeEncodeError):
        pytest.skip(f"this file system takes no folder named {name!r}")
    with pytest.raises(DatasetError, match="rename the folder"):
        make_splits(DataSpec("folder", str(data), image_size=8))
