"""CIFAR-10's "binary version" (``cifar-10-batches-bin``: ``data_batch_N.bin`` records of a label byte
and 3072 pixel bytes, class names in ``batches.meta.txt``) trains as the python version does: a folder
holding data_batch_1.bin..5.bin was refused as having "no CIFAR-10 training batches (data_batch_1..5)"."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from training.data.cifar import read_cifar10
from training.data.image_formats import DatasetError
from training.data.images import DataSpec, make_splits

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def batches(count: int = 2, per_batch: int = 10) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` batches of (pixel rows (N, 3072), labels (N,)), every class in each."""
    rng = np.random.default_rng(11)
    return [
        (rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), rng.permutation(per_batch) % 10)
        for _ in range(count)
    ]


def write_python_version(root, data) -> None:
    root.mkdir()
    for k, (rows, labels) in enumerate(data, 1):
        with open(root / f"data_batch_{k}", "wb") as fh:
            pickle.dump({b"data": rows, b"labels": [int(v) for v in labels]}, fh)
    with open(root / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [name.encode() for name in NAMES]}, fh)


def write_binary_version(root, data) -> None:
    root.mkdir()
    for k, (rows, labels) in enumerate(data, 1):
        records = np.concatenate([labels.astype(np.uint8)[:, None], rows], axis=1)  # (N, 1 + 3072)
        records.tofile(root / f"data_batch_{k}.bin")
    (root / "batches.meta.txt").write_text("\n".join(NAMES) + "\n\n", encoding="utf-8")


def test_the_binary_version_reads_the_images_labels_and_names_of_the_python_version(tmp_path):
    data = batches()
    write_python_version(tmp_path / "py", data)
    write_binary_version(tmp_path / "bin", data)
    python, binary = read_cifar10(str(tmp_path / "py")), read_cifar10(str(tmp_path / "bin"))
    assert binary.classes == python.classes == NAMES
    assert binary.labels.tolist() == python.labels.tolist()
    assert tuple(binary.images.shape) == (20, 3, 32, 32) and bool((binary.images == python.images).all())


def test_a_binary_cifar_folder_splits_for_training(tmp_path):
    write_binary_version(tmp_path / "bin", batches())
    train, val = make_splits(DataSpec(dataset="cifar10", data_path=str(tmp_path / "bin"), val_fraction=0.5))
    assert len(train) + len(val) == 20 and train.classes == NAMES and train.channels == 3


def test_a_binary_batch_cut_short_is_one_error_naming_it(tmp_path):
    write_binary_version(tmp_path / "bin", batches())
    cut = tmp_path / "bin" / "data_batch_2.bin"
    cut.write_bytes(cut.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"data_batch_2\.bin: 30630 bytes, not a whole number of 3073"):
        read_cifar10(str(tmp_path / "bin"))


def test_a_gap_in_the_binary_batches_is_named(tmp_path):
    write_binary_version(tmp_path / "bin", batches(3))
    (tmp_path / "bin" / "data_batch_2.bin").unlink()
    with pytest.raises(DatasetError, match=r"data_batch_2\.bin is missing \(found 1, 3\)"):
        read_cifar10(str(tmp_path / "bin"))
