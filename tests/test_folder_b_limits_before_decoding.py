"""--limit-train/--limit-val choose the images kept before any is decoded (the selection, order and
pixels the run kept when it cut after decoding the whole), and the memory check counts only those; a
CIFAR or MNIST set upscaled to a large --image-size is checked as a folder is, before it is resized."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_data_images import write_mnist
from training.data import image_formats, images
from training.data.image_formats import DatasetError
from training.data.images import DataSpec, load_dataset, make_splits, split_indices


def write_folder(root, classes=("a", "b", "c"), per_class=20, size=10):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return str(root)


def write_cifar(root, batches=2, n=15):
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    for b in range(batches):
        data = rng.integers(0, 255, (n, 3072), dtype=np.uint8)
        batch = {b"data": data, b"labels": [int(i) for i in rng.integers(0, 10, n)]}
        (root / f"data_batch_{b + 1}").write_bytes(pickle.dumps(batch))
    return str(root)


def cut_after_decoding(spec):
    """The (train, val) images and labels as the run kept them when it decoded the whole first."""
    full = load_dataset(spec)
    train_idx, val_idx = split_indices(full.labels, spec.val_fraction, spec.seed)
    train_idx, val_idx = train_idx[: spec.limit_train], val_idx[: spec.limit_val]
    return [(full.images[i], full.labels[i]) for i in (train_idx, val_idx)], full.source_sizes


def assert_same_selection(spec, train, val):
    expected, sizes = cut_after_decoding(spec)
    for part, (pixels, labels) in zip((train, val), expected, strict=True):
        assert torch.equal(part.images, pixels) and torch.equal(part.labels, labels)
        assert part.source_sizes == sizes  # what a resume compares: the whole folder's class sizes


def test_limit_train_decodes_only_the_images_kept_and_keeps_the_same_ones(tmp_path, monkeypatch):
    spec = DataSpec("folder", write_folder(tmp_path / "data"), 8, None, 3, 0.2, 5, 2)
    decoded = []

    def counting(img, mode):
        decoded.append(img.filename)
        return to_8bit(img, mode)

    to_8bit = image_formats.to_8bit
    monkeypatch.setattr(image_formats, "to_8bit", counting)
    train, val = make_splits(spec)
    assert len(decoded) == 7, f"{len(decoded)} images decoded for 5 train + 2 val kept"  # was 60
    assert len(train) == 5 and len(val) == 2
    assert_same_selection(spec, train, val)


def test_limit_train_alone_keeps_every_validation_image_in_its_order(tmp_path):
    spec = DataSpec("folder", write_folder(tmp_path / "data"), 8, 1, 7, 0.25, 9)
    train, val = make_splits(spec)
    assert len(train) == 9 and len(val) == 15
    assert_same_selection(spec, train, val)


def test_the_memory_check_counts_only_the_images_a_limit_keeps(tmp_path, monkeypatch):
    path = write_folder(tmp_path / "data", per_class=20, size=8)
    monkeypatch.setattr(image_formats, "available_memory", lambda: 100_000)  # 60 x 32x32x3 x 2 do not fit
    train, val = make_splits(DataSpec("folder", path, 32, None, 0, 0.2, 5, 2))  # 7 x 3 KiB x 2 do
    assert len(train) == 5 and len(val) == 2
    with pytest.raises(DatasetError, match="60 images at 32x32x3"):
        make_splits(DataSpec("folder", path, 32))


@pytest.mark.parametrize(
    ("dataset", "write", "count", "shape"),
    [("cifar10", write_cifar, 30, "224x224x3"), ("mnist", write_mnist, 12, "224x224x1")],
)
def test_an_array_dataset_upscaled_past_memory_is_refused_in_one_line_before_resizing(
    tmp_path, monkeypatch, dataset, write, count, shape
):
    path = str(write(tmp_path / dataset))
    monkeypatch.setattr(image_formats, "available_memory", lambda: 10_000)

    def no_resizing(*args, **kwargs):
        raise AssertionError("the images were resized before the refusal")

    monkeypatch.setattr(images, "resize", no_resizing)
    for refused in (
        lambda: make_splits(DataSpec(dataset, path, 224)),
        lambda: load_dataset(DataSpec(dataset, path, 224)),
    ):
        with pytest.raises(DatasetError) as info:
            refused()
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"{path}: {count} images at {shape}")
        assert "at the peak, but 10 KiB is available" in message and "--image-size" in message


def test_an_array_dataset_cut_by_limits_is_checked_and_resized_for_the_images_kept_alone(
    tmp_path, monkeypatch
):
    spec = DataSpec("cifar10", write_cifar(tmp_path / "c"), 12, 1, 5, 0.2, 4, 3)
    resized = []

    def counting(batch, size):
        resized.append(batch.shape[0])
        return resize(batch, size)

    resize = images.resize
    monkeypatch.setattr(images, "resize", counting)
    train, val = make_splits(spec)
    assert resized == [7] and len(train) == 4 and len(val) == 3
    monkeypatch.setattr(images, "resize", resize)
    assert_same_selection(spec, train, val)  # channel conversion and resize per image: the same pixels
    monkeypatch.setattr(image_formats, "available_memory", lambda: 7 * 12 * 12 * 2 + 1)
    make_splits(spec)
    with pytest.raises(DatasetError, match="30 images at 12x12x1"):
        make_splits(DataSpec("cifar10", spec.data_path, 12, 1))
