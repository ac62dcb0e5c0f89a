"""Training's data path and run semantics on the files and interruptions real datasets bring: hidden and
foreign files in image folders, stray or missing CIFAR batches, ragged parallel corpora, Unicode
cleaning, and a resumed run that must end where an uninterrupted one would."""

from __future__ import annotations

import logging
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from training import classify, classify_loop
from training.classify_config import TrainConfig
from training.classify_resolve import resolve
from training.data.corpus import clean_pairs, load_parallel
from training.data.image_formats import DatasetError
from training.data.images import DataSpec, load_dataset


def write_images(root, classes=("ant", "bee"), per_class=3, suffix=".png"):
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.full((6, 5, 3), index * 100 + i, np.uint8)).save(root / name / f"{i}{suffix}")
    return root


def load_folder(root, **spec):
    return load_dataset(DataSpec(dataset="folder", data_path=str(root), image_size=8, **spec))


def write_cifar_batches(root, numbers=(1, 2, 3), n=4, data=None):
    root.mkdir(parents=True, exist_ok=True)
    for b in numbers:
        pixels = np.full((n, 3072), b, np.uint8) if data is None else data
        batch = {b"data": pixels, b"labels": [i % 10 for i in range(n)]}
        (root / f"data_batch_{b}").write_bytes(pickle.dumps(batch))
    return root


def load_cifar(root):
    return load_dataset(DataSpec(dataset="cifar10", data_path=str(root), image_size=32))


def test_hidden_files_in_a_class_folder_are_skipped_like_hidden_folders(tmp_path):
    root = write_images(tmp_path / "imgs")
    (root / "ant" / "._0.png").write_bytes(b"\x00\x05\x16\x07Mac OS X resource fork")  # AppleDouble
    Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(root / "bee" / ".thumbnail.png")
    ds = load_folder(root)
    assert ds.images.shape == (6, 3, 8, 8) and ds.classes == ["ant", "bee"]


def test_tiff_images_are_read_and_files_without_an_image_suffix_are_named_in_a_warning(tmp_path, caplog):
    root = write_images(tmp_path / "imgs", suffix=".tif")
    (root / "ant" / "labels.csv").write_text("0,ant\n")
    with caplog.at_level(logging.WARNING, logger="training.data.image_formats"):
        ds = load_folder(root)
    assert ds.images.shape == (6, 3, 8, 8)
    assert "skipped 1 file(s) without an image suffix: labels.csv" in caplog.text


def test_a_broken_symlink_in_a_class_folder_is_an_error_naming_it(tmp_path):
    root = write_images(tmp_path / "imgs")
    os.symlink(tmp_path / "moved-away.png", root / "bee" / "3.png")
    with pytest.raises(DatasetError, match=r"bee/3.png: broken symbolic link"):
        load_folder(root)


def test_a_stray_copy_of_a_cifar_batch_is_not_read_as_another_batch(tmp_path):
    root = write_cifar_batches(tmp_path / "cifar", numbers=(1, 2))
    (root / "data_batch_1.bak").write_bytes((root / "data_batch_1").read_bytes())
    (root / "data_batch_2.tar.gz").write_bytes(b"not a pickle")
    assert load_cifar(root).images.shape[0] == 8  # two batches of 4, nothing twice


def test_a_cifar_batch_missing_from_the_numbering_is_an_error_naming_it(tmp_path):
    root = write_cifar_batches(tmp_path / "cifar", numbers=(1, 2, 4, 5))
    with pytest.raises(DatasetError, match=r"data_batch_3 is missing \(found 1, 2, 4, 5\)"):
        load_cifar(root)


def test_cifar_pixel_values_outside_a_byte_are_refused_not_wrapped(tmp_path):
    root = write_cifar_batches(tmp_path / "cifar", numbers=(1,), data=np.full((4, 3072), 300, np.int64))
    with pytest.raises(DatasetError, match=r"data_batch_1: expected pixel values in 0..255, got int64 300"):
        load_cifar(root)


def test_a_blank_line_ending_one_parallel_file_is_not_a_misalignment(tmp_path):
    (tmp_path / "a.en").write_text("one\ntwo\n\n\n")
    (tmp_path / "a.fr").write_text("un\ndeux\n")
    assert load_parallel(tmp_path / "a.en", tmp_path / "a.fr") == [("one", "un"), ("two", "deux")]
    assert load_parallel(tmp_path / "a.fr", tmp_path / "a.en") == [("un", "one"), ("deux", "two")]


def test_cleaning_normalises_before_collapsing_whitespace_so_no_double_space_survives():
    cleaned = clean_pairs([("it is a \u00b4quote", "\u2474 x")])  # NFKC: "´" -> " ́", "⑴" -> "(1)"
    assert all("  " not in text for pair in cleaned for text in pair)
    assert clean_pairs(cleaned) == cleaned


TINY = {
    "model": "lenet",
    "image_size": 16,
    "limit_train": 64,
    "limit_val": 32,
    "batch_size": 32,
    "lr": 0.01,
    "progress": False,
}


class Interrupted(Exception):
    """Stands for a crash or a kill after the first epoch."""


def interrupt_after_first_epoch(monkeypatch):
    trained = classify_loop.train_epoch

    def train_epoch(run, epoch):
        if epoch == 1:
            raise Interrupted
        return trained(run, epoch)

    monkeypatch.setattr(classify_loop, "train_epoch", train_epoch)


def test_a_resumed_run_with_dropout_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, monkeypatch):
    config = {**TINY, "epochs": 3, "model_args": {"dropout": 0.5}}
    classify.train(TrainConfig(**config, output_dir=str(tmp_path / "whole")))
    with monkeypatch.context() as patch:
        interrupt_after_first_epoch(patch)
        with pytest.raises(Interrupted):
            classify.train(TrainConfig(**config, output_dir=str(tmp_path / "cut")))
    classify.train(
        TrainConfig(**config, output_dir=str(tmp_path / "cut"), resume=str(tmp_path / "cut/lenet.pt"))
    )
    whole, cut = (torch.load(tmp_path / d / "lenet.resume.pt", weights_only=True) for d in ("whole", "cut"))
    assert whole["epoch"] == cut["epoch"] == 3
    assert all(torch.equal(whole["model"][k], cut["model"][k]) for k in whole["model"])


def test_resume_without_epochs_keeps_the_interrupted_runs_length_and_loss_not_the_recipes(
    tmp_path, monkeypatch
):
    settings = {"epochs": 2, "label_smoothing": 0.2, "clip_grad_norm": 1.5}
    with monkeypatch.context() as patch:
        interrupt_after_first_epoch(patch)
        with pytest.raises(Interrupted):
            classify.train(TrainConfig(**TINY, **settings, output_dir=str(tmp_path)))
    resumed = resolve(TrainConfig(**TINY, output_dir=str(tmp_path), resume=str(tmp_path / "lenet.pt")))
    assert {key: getattr(resumed, key) for key in settings} == settings  # the recipe says 20 epochs
    longer = TrainConfig(**TINY, epochs=3, output_dir=str(tmp_path), resume=str(tmp_path / "lenet.pt"))
    assert resolve(longer).epochs == 3  # a given --epochs still changes the length
