"""CIFAR-10 training batches, in either of the layouts its site distributes: the "python version"
(``cifar-10-batches-py``: pickled dicts) or the "binary version" (``cifar-10-batches-bin``: records of
a label byte and the pixels), read to uint8 ``[N, 3, 32, 32]`` as ``image_formats``' readers are."""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from kiln.labels import line_problem
from training.data.image_formats import DatasetError, RawImages, existing_dir

log = logging.getLogger(__name__)

CIFAR_BATCH = "data_batch_{n}"
CIFAR_RECORD = 1 + 3 * 32 * 32  # the binary version: a label byte, then the pixels


def read_cifar10(path: str | None, *, channels: int | None = None, size: int | None = None) -> RawImages:
    """CIFAR-10 training batches data_batch_1..5: the "python version" (pickled dicts of uint8 rows),
    or the "binary version" (``data_batch_1.bin``.., read by ``read_cifar10_binary``)."""
    root = existing_dir(path, "cifar10")
    if not numbered_files(root, CIFAR_BATCH) and numbered_files(root, CIFAR_BATCH + ".bin"):
        return read_cifar10_binary(root)
    images, labels = [], []
    for file in cifar_batch_files(root):
        batch = _unpickle(file)
        data, batch_labels = _cifar_field(batch, file, "data"), _cifar_field(batch, file, "labels")
        try:
            data = np.asarray(data)
        except ValueError as exc:  # rows of different lengths: numpy's message named no file
            raise DatasetError(f"{file}: data is not an (N, 3072) array of pixel rows ({exc})") from exc
        batch_labels = _cifar_labels(file, batch_labels)
        if data.dtype.kind not in "iu" or (data.size and not 0 <= data.min() <= data.max() <= 255):
            span = f" {data.min()}..{data.max()}" if data.dtype.kind in "iuf" and data.size else ""
            raise DatasetError(f"{file}: expected pixel values in 0..255, got {data.dtype}{span}")
        data = data.astype(np.uint8, copy=False)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(batch_labels) != data.shape[0]:
            raise DatasetError(
                f"{file}: expected data (N, 3072) and N labels, got {data.shape} / {len(batch_labels)}"
            )
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))  # rows are R, G, B planes
        labels.append(torch.from_numpy(batch_labels))
    meta_file = root / "batches.meta"
    if meta_file.is_file():
        names = _cifar_field(_unpickle(meta_file), meta_file, "label_names")
        if not isinstance(names, (list, tuple, np.ndarray)):
            raise DatasetError(
                f"{meta_file}: expected label_names as a list of class names, got {type(names).__name__}"
            )
        classes = class_names(meta_file, [_text(meta_file, name) for name in names])
    else:
        log.warning("%s: batches.meta not found, class names are indices", root)
        classes = [str(i) for i in range(10)]
    return cifar_images(root, images, labels, classes)


def read_cifar10_binary(root: Path) -> RawImages:
    """CIFAR-10 "binary version" (``cifar-10-batches-bin``): each record of ``data_batch_N.bin`` is
    one label byte, then the 3072 pixel bytes as in the python version; ``batches.meta.txt`` names the
    classes one a line. It was refused as "no CIFAR-10 training batches (data_batch_1..5)"."""
    images, labels = [], []
    for file in cifar_batch_files(root, ".bin"):
        raw = np.fromfile(file, dtype=np.uint8)
        if raw.size == 0 or raw.size % CIFAR_RECORD:
            raise DatasetError(
                f"{file}: {raw.size} bytes, not a whole number of {CIFAR_RECORD}-byte CIFAR-10 records "
                "(a label byte and 3072 pixel bytes each)"
            )
        records = raw.reshape(-1, CIFAR_RECORD)  # (N, 1 + 3072)
        labels.append(torch.from_numpy(records[:, 0].astype(np.int64)))
        images.append(torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).copy()))  # R, G, B planes
    meta_file = root / "batches.meta.txt"
    if meta_file.is_file():  # ten names, then blank lines
        try:  # utf-8-sig: a byte-order mark (Notepad) began the first class's name
            text = meta_file.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{meta_file}: not UTF-8 text ({exc})") from exc
        classes = class_names(meta_file, [line.strip() for line in text.splitlines() if line.strip()])
    else:
        log.warning("%s: batches.meta.txt not found, class names are indices", root)
        classes = [str(i) for i in range(10)]
    return cifar_images(root, images, labels, classes)


def cifar_images(
    root: Path, images: list[torch.Tensor], labels: list[torch.Tensor], classes: list[str]
) -> RawImages:
    """The batches joined, once every label is checked to name one of ``classes``."""
    labels_all = torch.cat(labels)
    outside = labels_all[(labels_all < 0) | (labels_all >= len(classes))]
    if len(outside):  # else the loss fails mid-training ("Target 12 is out of bounds")
        raise DatasetError(f"{root}: label {int(outside[0])} out of range for {len(classes)} classes")
    return RawImages(torch.cat(images), labels_all, classes)


def numbered_files(root: Path, pattern: str) -> dict[int, Path]:
    """The files of ``root`` named ``pattern`` with its ``{n}`` a number from 1, by number."""
    regex = re.escape(pattern).replace(re.escape("{n}"), "([1-9][0-9]*)")
    numbered = {}
    for file in root.iterdir():
        match = re.fullmatch(regex, file.name)
        if match and file.is_file():
            numbered[int(match.group(1))] = file
    return numbered


def cifar_batch_files(root: Path, suffix: str = "") -> list[Path]:
    """``data_batch_1`` .. ``data_batch_k`` (each with ``suffix``) in number order. Only these exact
    names count (a stray ``data_batch_1.bak`` would train on its images twice, some of them validation
    images too), and a gap in the numbers is an error: a batch lost from a download must not shrink the
    training set silently."""
    numbered = numbered_files(root, CIFAR_BATCH + suffix)
    if not numbered:
        raise DatasetError(
            f"{root}: no CIFAR-10 training batches (data_batch_1..5 of the python version, or "
            "data_batch_1.bin..5.bin of the binary version)"
        )
    missing = sorted(set(range(1, max(numbered) + 1)) - set(numbered))
    if missing:
        raise DatasetError(
            f"{root}: data_batch_{missing[0]}{suffix} is missing "
            f"(found {', '.join(map(str, sorted(numbered)))})"
        )
    return [numbered[n] for n in sorted(numbered)]


def _unpickle(file: Path) -> dict:
    try:
        with open(file, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")  # the official CIFAR format is a Python pickle
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt batch
        raise DatasetError(f"{file}: not a readable CIFAR batch ({exc})") from exc
    if not isinstance(batch, dict):
        raise DatasetError(f"{file}: expected a pickled dict, got {type(batch).__name__}")
    return batch


def _cifar_field(batch: dict, file: Path, key: str):
    for candidate in (key, key.encode()):
        if candidate in batch:
            return batch[candidate]
    raise DatasetError(f"{file}: missing key {key!r}")


def _text(file: Path, value: str | bytes) -> str:
    if not isinstance(value, bytes):
        return str(value)
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{file}: the class name {value!r} is not UTF-8 ({exc})") from exc


def _cifar_labels(file: Path, labels) -> np.ndarray:
    """A batch's labels as int64 ``[N]``: a list of class indices (whole floats pass). Strings, None,
    nested lists or fractions were a bare numpy error naming no file, a traceback, or cut to an
    index silently (1.7 trained as class 1)."""
    try:
        array = np.asarray(labels)
    except ValueError as exc:
        raise DatasetError(f"{file}: labels are not a list of class indices ({exc})") from exc
    whole = array.dtype.kind in "iu" or (
        array.dtype.kind == "f" and bool(np.isfinite(array).all()) and bool((array == np.round(array)).all())
    )
    if array.ndim != 1 or not whole:
        raise DatasetError(
            f"{file}: expected labels as a list of integer class indices, got {array.dtype} "
            f"of shape {array.shape}"
        )
    return array.astype(np.int64)


def class_names(meta_file: Path, names: list[str]) -> list[str]:
    """``names`` once each is found fit to be one line of labels.txt and none is repeated: refused here,
    before training, as a class folder's name is, not by export after the run (a name holding a line
    break), nor served as two classes of one name."""
    for name in names:
        problem = line_problem(name)
        if problem:
            raise DatasetError(f"{meta_file}: the class name {name!r} {problem}; correct it there")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DatasetError(
            f"{meta_file}: class name(s) {', '.join(map(repr, repeated))} given more than once; "
            "each class needs a name of its own"
        )
    return names
