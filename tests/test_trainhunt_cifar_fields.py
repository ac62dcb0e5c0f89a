"""A CIFAR-10 batch or meta file of the wrong content is one error naming the file, before training:
labels that are not class indices were a bare numpy error ("invalid literal for int() ..."), a
traceback (None, nested lists) or cut to an index silently (1.7 trained as class 1); class names that
export refuses (a line break, blank), that repeat, or that are not UTF-8 trained, a traceback or an
error naming no file; a byte-order mark began the binary version's first class name ("\\ufeffairplane").
An MNIST IDX file of 0x0-pixel images trained on blank images."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from training.data.cifar import read_cifar10
from training.data.image_formats import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, DatasetError, read_mnist

NAMES = [f"c{i}".encode() for i in range(10)]


def write_python(root, labels, names=NAMES, data=None):
    root.mkdir()
    rows = np.zeros((4, 3072), np.uint8) if data is None else data
    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": rows, b"labels": labels}))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return str(root)


@pytest.mark.parametrize("labels", [["a", "b", "c", "d"], [1.7, 0.0, 1.0, 2.0], [[1], [2], [3], [4]], None])
def test_labels_that_are_not_class_indices_are_refused_naming_the_batch(tmp_path, labels):
    root = write_python(tmp_path / "cifar", labels)
    with pytest.raises(DatasetError, match=r"data_batch_1: expected labels as a list of integer class"):
        read_cifar10(root)


def test_whole_float_labels_and_plain_lists_of_rows_still_read(tmp_path):
    rows = [[7] * 3072 for _ in range(4)]
    raw = read_cifar10(write_python(tmp_path / "cifar", [0.0, 1.0, 2.0, 3.0], data=rows))
    assert raw.labels.tolist() == [0, 1, 2, 3] and raw.classes == [n.decode() for n in NAMES]


def test_ragged_pixel_rows_are_refused_naming_the_batch(tmp_path):
    root = write_python(tmp_path / "cifar", [0, 1], data=[[0] * 3072, [0] * 10])
    with pytest.raises(DatasetError, match=r"data_batch_1: data is not an \(N, 3072\) array"):
        read_cifar10(root)


@pytest.mark.parametrize(
    ("names", "why"),
    [
        ([b"a\nb", b"c"], "holds a line break"),
        ([b"a", b" "], "is blank"),
        ([b"a", b"a"], r"'a' given more than once"),
        ([b"\xff\xfe", b"c"], "is not UTF-8"),
        (None, "expected label_names as a list of class names, got NoneType"),
    ],
)
def test_class_names_export_would_refuse_are_refused_naming_the_meta_file(tmp_path, names, why):
    root = write_python(tmp_path / "cifar", [0, 1, 0, 1], names=names)
    with pytest.raises(DatasetError, match=rf"batches\.meta: .*{why}"):
        read_cifar10(root)


def write_binary(root, meta: bytes):
    root.mkdir()
    records = np.zeros((4, 3073), np.uint8)
    records[:, 0] = [0, 1, 2, 0]
    records.tofile(root / "data_batch_1.bin")
    (root / "batches.meta.txt").write_bytes(meta)
    return str(root)


def test_a_byte_order_mark_does_not_begin_the_first_class_name(tmp_path):
    raw = read_cifar10(write_binary(tmp_path / "bin", b"\xef\xbb\xbfairplane\r\nauto\r\nbird\r\n\r\n"))
    assert raw.classes == ["airplane", "auto", "bird"]


def test_a_meta_text_not_in_utf8_is_refused_naming_it(tmp_path):
    root = write_binary(tmp_path / "bin", "airplane\nauto\nbird\n".encode("utf-16"))
    with pytest.raises(DatasetError, match=r"batches\.meta\.txt: not UTF-8 text"):
        read_cifar10(root)


def test_idx_images_of_no_pixels_are_refused(tmp_path):
    def idx(path, shape, magic, payload=b""):
        path.write_bytes(magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape) + payload)

    idx(tmp_path / "train-images-idx3-ubyte", (5, 0, 0), IDX_IMAGES_MAGIC)
    idx(tmp_path / "train-labels-idx1-ubyte", (5,), IDX_LABELS_MAGIC, bytes(range(5)))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte: IDX images of 0x0 pixels"):
        read_mnist(str(tmp_path))
