"""Image datasets for the classifiers: load, resize, split by seed, and normalisation statistics.

A split is fully described by a plain ``data_info`` dict (stored as the checkpoint's ``data`` key), so
``load_splits(ckpt["data"])`` rebuilds exactly the validation images a model was evaluated on; export
uses it for its top-1 parity check. Images stay uint8 ``[N, C, H, W]``; normalisation happens later
(inside the training step and, after export, inside the graph) with mean/std in [0, 1] pixel units:
``x = (uint8 / 255 - mean) / std``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from training.data.cifar import read_cifar10
from training.data.image_formats import (
    DatasetError,
    RawImages,
    check_fits,
    decode_folder,
    list_folder,
    read_digits,
    read_fashion_mnist,
    read_folder,
    read_mnist,
)

log = logging.getLogger(__name__)

# name -> (reader, native channels or None when the files decide)
READERS: dict[str, tuple[Callable[..., RawImages], int | None]] = {
    "digits": (read_digits, 1),
    "folder": (read_folder, None),
    "cifar10": (read_cifar10, 3),
    "mnist": (read_mnist, 1),
    "fashion-mnist": (read_fashion_mnist, 1),
}
DATASETS = tuple(READERS)


@dataclass
class DataSpec:
    """Everything that determines a split; ``asdict`` of it is the checkpoint's ``data`` dict."""

    dataset: str = "digits"
    data_path: str | None = None
    image_size: int = 32
    channels: int | None = None  # None: the dataset's native channels
    seed: int = 0
    val_fraction: float = 0.2
    limit_train: int | None = None
    limit_val: int | None = None


class ImageDataset(Dataset):
    """In-memory images: ``images`` uint8 ``[N, C, H, W]``, ``labels`` int64 ``[N]``, ``classes`` names.

    ``source_sizes`` counts the images of each class in the dataset as read, before any split or
    ``--limit``: a subset keeps its source's, so a resumed run can tell that the data it reads is not
    the interrupted run's (``contents``)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match {images.shape[0]} images")
        self.images, self.labels, self.classes = images, labels.to(torch.int64), list(classes)
        self.source_sizes = class_sizes(self.labels, len(self.classes))

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[2:])

    def subset(self, indices: torch.Tensor) -> ImageDataset:
        part = ImageDataset(self.images[indices], self.labels[indices], self.classes)
        part.source_sizes = self.source_sizes
        return part

    def contents(self) -> dict[str, list]:
        """The classes and the images of each in the dataset as read: what a resume state records."""
        return {"classes": list(self.classes), "class_sizes": list(self.source_sizes)}


def class_sizes(labels: torch.Tensor, num_classes: int) -> list[int]:
    """How many of ``labels`` name each of ``num_classes`` classes."""
    counts = torch.bincount(labels[(labels >= 0) & (labels < num_classes)], minlength=num_classes)
    return [int(n) for n in counts]


def contents_differences(saved: dict[str, list], now: dict[str, list]) -> list[str]:
    """How the dataset read now (``ImageDataset.contents``) differs from the one a run recorded: the
    classes added, removed (a renamed one is both) or reordered, and the classes whose image count
    changed (images added or removed: another split, so validation images trained on)."""
    old, new = saved["classes"], now["classes"]
    differ = []
    added, removed = [c for c in new if c not in old], [c for c in old if c not in new]
    if added:
        differ.append(f"{len(added)} class(es) added ({_names(added)})")
    if removed:
        differ.append(f"{len(removed)} class(es) gone ({_names(removed)})")
    if not (added or removed) and old != new:
        differ.append("its classes in another order")
    before = dict(zip(old, saved["class_sizes"], strict=True))
    changed = [
        f"{name}: {size} (the interrupted run's: {before[name]})"
        for name, size in zip(new, now["class_sizes"], strict=True)
        if name in before and before[name] != size
    ]
    if changed:
        differ.append(f"images per class {_names(changed)}")
    return differ


def _names(items: list[str], shown: int = 5) -> str:
    return ", ".join(items[:shown]) + (f", ... ({len(items) - shown} more)" if len(items) > shown else "")


@dataclass
class Unread:
    """A dataset before its images are brought to the model's input: every image's label, the class
    names, and ``images(positions)``, the images at ascending ``positions`` (None: all) as uint8
    ``[n, C, size, size]``. A folder decodes only those files, an array format converts and resizes
    only those, each after ``check_fits`` has counted them."""

    labels: torch.Tensor
    classes: list[str]
    images: Callable[[torch.Tensor | None], torch.Tensor]


def load_dataset(spec: DataSpec, progress: bool = False) -> ImageDataset:
    """Read the whole (training) dataset and bring it to ``spec.image_size`` and ``spec.channels``;
    ``progress``: a bar while a folder's images are decoded (minutes for a large one)."""
    data = open_dataset(spec, progress)
    return ImageDataset(data.images(None), data.labels, data.classes)


def open_dataset(spec: DataSpec, progress: bool = False) -> Unread:
    """``spec``'s dataset with its labels read and no image decoded or resized yet (``Unread``)."""
    if spec.dataset not in READERS:
        raise DatasetError(f"unknown dataset {spec.dataset!r}; choose from {DATASETS}")
    if spec.channels not in (None, 1, 3):
        raise DatasetError(f"channels must be 1 or 3, got {spec.channels}")
    if spec.image_size < 4:
        raise DatasetError(f"image size must be at least 4, got {spec.image_size}")
    reader, _native = READERS[spec.dataset]
    if reader is read_folder:
        listing = list_folder(spec.data_path, channels=spec.channels)
        data = Unread(
            listing.labels,
            listing.classes,
            lambda positions: decode_folder(listing, spec.image_size, progress, positions),
        )
    else:
        raw = reader(spec.data_path, channels=spec.channels, size=spec.image_size)
        data = Unread(raw.labels, raw.classes, lambda positions: bring(raw, spec, positions))
    if data.labels.shape[0] == 0:
        raise DatasetError(f"dataset {spec.dataset!r} at {spec.data_path} holds no images")
    return data


def bring(raw: RawImages, spec: DataSpec, positions: torch.Tensor | None) -> torch.Tensor:
    """The images of an array format at ``positions`` (None: all) in ``spec``'s channels and size, once
    ``check_fits`` has counted them there: CIFAR at 224 is 49x its native bytes."""
    images = raw.images if positions is None else raw.images[positions]
    channels = spec.channels or images.shape[1]
    check_fits(spec.data_path or spec.dataset, images.shape[0], channels, spec.image_size)
    return resize(convert_channels(images, channels), spec.image_size)


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 [N, C, H, W] -> [N, channels, H, W]: gray is replicated, RGB goes to luma by Pillow's "L"
    conversion, the gateway's (``serving/protocol/images.py``): float weights round some pixels apart."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        n, _, h, w = images.shape
        rows = images.permute(0, 2, 3, 1).reshape(n * h, w, 3).numpy()  # (N*H, W, 3): one tall image
        luma = np.asarray(Image.fromarray(np.ascontiguousarray(rows), "RGB").convert("L"))  # (N*H, W)
        return torch.from_numpy(luma.copy()).reshape(n, 1, h, w)
    raise DatasetError(f"cannot convert {have}-channel images to {channels} channels")


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of uint8 [N, C, H, W] to [N, C, size, size] by Pillow, plane by plane, as the
    gateway resizes an upload (and ``read_folder`` a file): torch's interpolation rounds ~10 % of the
    pixels one level apart, so a model would be served slightly other pixels than it was trained on."""
    if tuple(images.shape[2:]) == (size, size):
        return images
    n, c, h, w = images.shape
    planes = images.reshape(n * c, h, w).numpy()  # (N*C, H, W)
    out = np.empty((n * c, size, size), dtype=np.uint8)
    for i, plane in enumerate(planes):
        out[i] = np.asarray(Image.fromarray(plane, "L").resize((size, size), Image.Resampling.BILINEAR))
    return torch.from_numpy(out).reshape(n, c, size, size)


def split_indices(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified, seeded train/validation indices: each class gives ``round(n * val_fraction)`` to val."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be in (0, 1), got {val_fraction}")
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction))) if len(members) > 1 else 0
        val.append(members[:n_val])
        train.append(members[n_val:])
    # Shuffle across classes too, so a --limit takes a class-balanced prefix.
    train_idx, val_idx = torch.cat(train), torch.cat(val)
    train_idx = train_idx[torch.randperm(len(train_idx), generator=generator)]
    val_idx = val_idx[torch.randperm(len(val_idx), generator=generator)]
    return train_idx, val_idx


def make_splits(spec: DataSpec, progress: bool = False) -> tuple[ImageDataset, ImageDataset]:
    """Cut the deterministic train/validation split ``spec`` describes from the labels, then bring only
    the images it keeps (``--limit-train``/``--limit-val`` cut before decoding, not after)."""
    data = open_dataset(spec, progress)
    if len(data.classes) < 2:  # softmax over one logit is 1 whatever the weights: a loss of 0, nothing learns
        raise DatasetError(
            f"{spec.data_path or spec.dataset}: one class ({', '.join(data.classes)}); a classifier needs at "
            "least 2 classes (a folder dataset: one sub-folder of images per class)"
        )
    train_idx, val_idx = split_indices(data.labels, spec.val_fraction, spec.seed)
    if spec.limit_train is not None:
        train_idx = train_idx[: spec.limit_train]
    if spec.limit_val is not None:
        val_idx = val_idx[: spec.limit_val]
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise DatasetError(
            f"split of {spec.dataset!r} left {len(train_idx)} train / {len(val_idx)} val images"
        )
    consequences = {"training": "the model never learns them", "validation": "val accuracy leaves them out"}
    for split, idx in (("training", train_idx), ("validation", val_idx)):
        absent = absent_classes(data.labels[idx], data.classes)
        if absent:  # a class of one image goes to training whole; --limit-train/--limit-val cut the rest
            shown = ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else "")
            log.warning(
                "%s: no %s image of %d class(es), so %s: %s",
                spec.data_path or spec.dataset,
                split,
                len(absent),
                consequences[split],
                shown,
            )
    return kept_splits(data, train_idx, val_idx)


def kept_splits(
    data: Unread, train_idx: torch.Tensor, val_idx: torch.Tensor
) -> tuple[ImageDataset, ImageDataset]:
    """The (train, validation) datasets at these indices of ``data``, only their images brought, each
    split in its indices' order; both keep the class sizes of the whole (``ImageDataset.contents``)."""
    kept = torch.cat([train_idx, val_idx]).sort().values  # disjoint; ascending, as the files are read
    everything = len(kept) == len(data.labels)
    images = data.images(None if everything else kept)  # (len(kept), C, H, W)
    place = torch.empty(len(data.labels), dtype=torch.int64)
    place[kept] = torch.arange(len(kept))  # an index of the whole -> its row in ``images``
    sizes = class_sizes(data.labels, len(data.classes))
    splits = []
    for idx in (train_idx, val_idx):
        part = ImageDataset(images[place[idx]], data.labels[idx], data.classes)
        part.source_sizes = sizes
        splits.append(part)
    return splits[0], splits[1]


def absent_classes(labels: torch.Tensor, classes: list[str]) -> list[str]:
    """The names of ``classes`` that no label in ``labels`` names."""
    present = set(labels.tolist())
    return [name for index, name in enumerate(classes) if index not in present]


def load_splits(data_info: dict[str, Any]) -> tuple[ImageDataset, ImageDataset]:
    """Rebuild exactly the (train, validation) split recorded in a checkpoint's ``data`` dict; data of
    other split sizes (images added or removed since) is refused: its validation split is reshuffled
    over images the run trained on, and export's checks and int8 gate must not measure on those."""
    known = set(asdict(DataSpec()))
    spec = DataSpec(**{k: v for k, v in data_info.items() if k in known})
    train, val = make_splits(spec)
    now, was = (len(train), len(val)), (data_info.get("n_train"), data_info.get("n_val"))
    if None not in was and now != was:  # images added or removed: another split, its validation trained on
        raise DatasetError(
            f"{spec.data_path or spec.dataset}: {now[0]} train / {now[1]} val images where the run had "
            f"{was[0]} / {was[1]}: not the data it trained on (its validation split would hold images it "
            "trained on); point --data-path at that data"
        )
    return train, val


def data_place(data_path: str) -> str:
    """A ``--data-path`` made absolute (``~`` expanded), as a run records it: where the data is, so a
    resumed run, export and bench find it from any working directory."""
    return os.path.abspath(os.path.expanduser(data_path))


def data_info(spec: DataSpec, train: ImageDataset, val: ImageDataset) -> dict[str, Any]:
    """The checkpoint's ``data`` dict: the spec (with channels resolved) plus the split sizes."""
    info = asdict(spec)
    info["channels"] = train.channels
    if spec.data_path:  # absolute, so export can rebuild the split from any working directory
        info["data_path"] = str(Path(spec.data_path).expanduser().resolve())
    info.update(n_train=len(train), n_val=len(val))
    return info


def channel_stats(images: torch.Tensor, chunk: int = 16) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 [N, C, H, W] images in [0, 1] units (std floored at 1e-3).

    Exact integer sums over ``chunk`` images at a time: a float64 copy of the whole set took 16 bytes
    a pixel (14x the decoded images at the peak: a folder that fitted was OOM-killed here)."""
    total = torch.zeros(images.shape[1], dtype=torch.int64)
    squares = torch.zeros(images.shape[1], dtype=torch.int64)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].to(torch.int32)  # (chunk, C, H, W); 255 ** 2 fits
        total += part.sum(dim=(0, 2, 3))
        squares += (part * part).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total.double() / count
    var = (squares.double() / count - mean * mean).clamp_min(0.0)
    std = (var.sqrt() / 255.0).clamp_min(1e-3)
    return [float(v) for v in mean / 255.0], [float(v) for v in std]


def normalize(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 or [0, 1] float [N, C, H, W] -> float32 ``(x - mean) / std``."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s
