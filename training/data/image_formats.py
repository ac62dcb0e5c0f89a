"""Readers for the image formats Kiln trains on, each returning uint8 ``[N, C, H, W]`` at native size.

Readers only parse files; resizing, channel conversion and splitting live in ``images.py`` so every
format goes through the same pipeline (CIFAR-10's two layouts are read in ``cifar.py``). Nothing here
downloads anything: the default dataset (scikit-learn's bundled handwritten digits) ships inside the
scikit-learn wheel.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from tqdm import tqdm

from kiln.images import to_8bit, upright
from kiln.labels import line_problem
from training.data.memory import available_memory, gib

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm")
IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions (N, H, W)
IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension (N,)
GZIP_MAGIC = b"\x1f\x8b"
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # Pillow modes
MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


class DatasetError(ValueError):
    """A dataset path or file is missing, empty or malformed; the message names the culprit."""


@dataclass
class RawImages:
    """Images as read from disk: uint8 ``[N, C, H, W]``, int64 labels ``[N]`` and class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]


def read_digits(
    path: str | None = None, *, channels: int | None = None, size: int | None = None
) -> RawImages:
    """scikit-learn's 1797 bundled 8x8 digit scans (values 0..16), rescaled to 0..255 uint8."""
    table = digits_table()  # (N, 65): 64 pixels, then the digit
    pixels = np.clip(np.rint(table[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    images = torch.from_numpy(pixels).unsqueeze(1)  # (N, 1, 8, 8)
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return RawImages(images, labels, [str(digit) for digit in range(10)])


def digits_table() -> np.ndarray:
    """float64 ``[1797, 65]``: scikit-learn's bundled ``digits.csv.gz`` (each scan's 64 pixels, then its
    digit), read as ``sklearn.datasets.load_digits`` reads it but without importing scikit-learn: its
    imports (scipy's among them) took 1.3 s of every training process's start, each torchrun rank's
    too, for a 1797-row table. scikit-learn's own reader where its files are laid out otherwise."""
    spec = importlib.util.find_spec("sklearn")  # found, not imported
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root, "datasets", "data", "digits.csv.gz")
        if path.is_file():
            return np.loadtxt(path, delimiter=",")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.column_stack([bunch.data, bunch.target])


@dataclass
class FolderFiles:
    """A folder dataset listed, nothing decoded: its image files in class then name order, each one's
    label, the class names and the channels they will be decoded to."""

    root: Path
    files: list[Path]
    labels: torch.Tensor
    classes: list[str]
    channels: int


def read_folder(
    path: str | None, *, channels: int | None = None, size: int | None = None, progress: bool = False
) -> RawImages:
    """One sub-folder per class (sorted names = class indices); images turned upright by their EXIF
    Orientation, converted and resized by Pillow, as the gateway decodes an upload. All of them are
    decoded into memory at ``size``: a folder that cannot fit is refused first (``check_fits``);
    ``progress`` shows a bar while they are read."""
    listing = list_folder(path, channels=channels)
    return RawImages(decode_folder(listing, size, progress), listing.labels, listing.classes)


def list_folder(path: str | None, *, channels: int | None = None) -> FolderFiles:
    """A folder's class sub-folders and image files, checked, and its channels (None: 3 if any image is
    in colour, from the headers alone): everything a split needs before an image is decoded."""
    root = existing_dir(path, "folder")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{root}: no class sub-folders (expected one folder of images per class)")
    classes = [class_name(d.name) for d in class_dirs]
    for class_dir, name in zip(class_dirs, classes, strict=True):
        problem = line_problem(name)  # refused here, before training, not by export after it
        if problem:
            raise DatasetError(f"{class_dir}: the class name {name!r} {problem}; rename the folder")
    files_per_class = [class_images(d) for d in class_dirs]
    for class_dir, files in zip(class_dirs, files_per_class, strict=True):
        if not files:
            raise DatasetError(f"{class_dir}: empty class folder (no {'/'.join(IMAGE_SUFFIXES)} files)")
    if channels is None:
        channels = folder_channels([f for files in files_per_class for f in files])
    files = [file for class_files in files_per_class for file in class_files]
    labels = [index for index, class_files in enumerate(files_per_class) for _ in class_files]
    return FolderFiles(root, files, torch.tensor(labels, dtype=torch.int64), classes, channels)


def decode_folder(
    listing: FolderFiles,
    size: int | None,
    progress: bool = False,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 ``[N, C, H, W]``: the listed files at ``positions`` (ascending; None: all of them),
    decoded at ``size``, after ``check_fits`` has counted only those: a ``--limit-train`` pays for the
    images it keeps, not the whole folder."""
    from PIL import Image

    root, channels = listing.root, listing.channels
    picked = range(len(listing.files)) if positions is None else positions.tolist()
    files = [listing.files[i] for i in picked]
    count, mode = len(files), {1: "L", 3: "RGB"}[channels]
    if size is not None:
        check_fits(root, count, channels, size)
    # At a known size each image is written into its place: no list of them stacked into a second copy.
    out = np.empty((count, channels, size, size), dtype=np.uint8) if size is not None else None
    arrays = []
    bar = tqdm(files, desc=f"reading {root.name or root}", unit="img", leave=False, disable=not progress)
    for i, file in enumerate(bar):
        try:
            with Image.open(file) as img:
                img = to_8bit(upright(img), mode)  # as the gateway decodes: EXIF Orientation applied
                if size is not None and img.size != (size, size):
                    img = img.resize((size, size), Image.Resampling.BILINEAR)
                array = np.asarray(img, dtype=np.uint8).reshape(img.size[1], img.size[0], channels)
        except UNREADABLE as exc:
            raise unreadable(file, exc) from exc
        if out is not None:
            out[i] = array.transpose(2, 0, 1)  # (C, H, W)
        else:
            arrays.append(array)
    if out is None:
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise DatasetError(
                f"{root}: images have different sizes {sorted(shapes)}; pass an image size to resize"
            )
        out = np.stack(arrays).transpose(0, 3, 1, 2)  # (N, C, H, W)
        del arrays
    images = torch.from_numpy(np.ascontiguousarray(out))
    of_all = f" (of {len(listing.files)})" if count < len(listing.files) else ""
    log.info(
        "%s: %d images%s of %s, %s in memory",
        root,
        count,
        of_all,
        "x".join(map(str, images.shape[1:])),
        gib(images.numel()),
    )
    return images


# The images kept are held twice at the most: as decoded (or resized), and cut into their train and
# validation splits (``make_splits``) before the whole is let go. Measured on a folder: ~2.1x by RSS
# (was 3.2x, then 14x while ``channel_stats`` made float64 copies).
PEAK_COPIES = 2


def check_fits(root: Path | str, count: int, channels: int, size: int) -> None:
    """Refuse, before decoding (or resizing) anything, images that cannot fit at ``size`` in the memory
    this process may take: else the OOM killer ends the run minutes in, with no message. A CIFAR or
    MNIST set upscaled to 224 needs as much as a folder of as many images."""
    need = count * channels * size * size
    available = available_memory()
    if available is not None and need * PEAK_COPIES > available:
        raise DatasetError(
            f"{root}: {count} images at {size}x{size}x{channels} are decoded into memory: {gib(need)}, "
            f"{gib(need * PEAK_COPIES)} at the peak, but {gib(available)} is available; pass a smaller "
            "--image-size or fewer images (--limit-train and --limit-val cut them before decoding)"
        )


def class_name(folder: str) -> str:
    """A class folder's name as the UTF-8 text its bytes hold, whatever the locale: under a C locale
    Python names files in ASCII (``café`` is ``caf\\udcc3\\udca9``), which was refused as not UTF-8;
    bytes that are not UTF-8 stay escaped, and ``line_problem`` names them."""
    return os.fsencode(folder).decode("utf-8", "surrogateescape")


def recorded_class_name(name: str) -> str:
    """A class name a run recorded before ``class_name``, read as ``class_name`` reads it now: under a
    locale whose encoding is not UTF-8, Python's name of the folder (Latin-1: ``cafÃ©`` for ``café``).
    A name the locale's encoding cannot hold (ASCII: no such run trained) stays as it is."""
    try:
        return class_name(name)
    except UnicodeEncodeError:
        return name


def class_images(class_dir: Path) -> list[Path]:
    """A class folder's images, sorted by name. Hidden files (macOS ``._x.png`` resource forks,
    ``.DS_Store``) are skipped like hidden folders; other files are skipped with a warning naming them,
    so a folder of an unexpected format is not silently trained on in part, and so are sub-folders
    (``cat/2019/*.jpg``, which torchvision's ImageFolder would read); a broken link is an error."""
    images, others, folders = [], [], []
    for file in sorted(class_dir.iterdir()):
        if file.name.startswith("."):
            continue
        if file.is_symlink() and not file.exists():
            raise DatasetError(
                f"{file}: broken symbolic link (its target {os.readlink(file)} does not exist)"
            )
        if file.is_dir():
            folders.append(file.name)
        elif file.is_file():
            (images if file.suffix.lower() in IMAGE_SUFFIXES else others).append(file.name)
    if others:
        log.warning(
            "%s: skipped %d file(s) without an image suffix: %s", class_dir, len(others), _first(others)
        )
    if folders:
        log.warning(
            "%s: skipped %d sub-folder(s), whose images are not read (only the class folder's own): %s",
            class_dir,
            len(folders),
            _first(folders),
        )
    return [class_dir / name for name in images]


def _first(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def folder_channels(files: list[Path]) -> int:
    """3 if any image is in colour, else 1: a grey first image must not make a colour folder grey."""
    from PIL import Image

    for file in files:
        try:
            with Image.open(file) as img:  # the header only
                if img.mode not in GRAY_MODES:
                    return 3
        except UNREADABLE as exc:
            raise unreadable(file, exc) from exc
    return 1


# What Pillow raises on a file it cannot decode: OSError (UnidentifiedImageError is one), and
# DecompressionBombError, which is not one, on an image over its 179 M pixels (a large panorama).
UNREADABLE = (OSError, PIL.Image.DecompressionBombError)


def unreadable(file: Path, exc: Exception) -> DatasetError:
    """One line naming ``file`` that Pillow could not decode: a traceback named neither the file nor
    the remedy for an image Pillow refuses as too large."""
    if isinstance(exc, PIL.Image.DecompressionBombError):
        return DatasetError(f"{file}: too large to decode ({exc}); downscale it or move it out of the folder")
    return DatasetError(f"{file}: not a readable image ({exc})")


def read_mnist(path: str | None, *, channels: int | None = None, size: int | None = None) -> RawImages:
    """MNIST training IDX files (raw or .gz)."""
    return _read_idx_pair(path, "mnist", MNIST_CLASSES)


def read_fashion_mnist(
    path: str | None, *, channels: int | None = None, size: int | None = None
) -> RawImages:
    """Fashion-MNIST training IDX files (same layout and names as MNIST)."""
    return _read_idx_pair(path, "fashion-mnist", FASHION_CLASSES)


def read_idx(file: Path, expected_magic: int) -> np.ndarray:
    """Parse one IDX file (raw or gzip), checking the magic number and that the payload size matches.

    Compressed or not is read from the bytes, not the name: a browser that inflated a download kept its
    ``.gz`` ("Not a gzipped file"), and ``gunzip -c`` output may keep one too. A damaged stream is one
    line naming the file (zlib's error is no OSError: it escaped as a traceback)."""
    try:
        with open(file, "rb") as fh:
            raw = fh.read()
        if raw[:2] == GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{file}: cannot read ({exc})") from exc
    if len(raw) < 4:
        raise DatasetError(f"{file}: too short to be an IDX file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DatasetError(f"{file}: bad IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{file}: truncated IDX header")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DatasetError(
            f"{file}: IDX dims {dims} need {expected} bytes of data, found {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_idx_pair(path: str | None, name: str, classes: list[str]) -> RawImages:
    root = existing_dir(path, name)
    image_file = _find_idx(root, "train-images-idx3-ubyte")
    label_file = _find_idx(root, "train-labels-idx1-ubyte")
    images = read_idx(image_file, IDX_IMAGES_MAGIC)
    labels = read_idx(label_file, IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{root}: {images.shape[0]} images but {labels.shape[0]} labels")
    if images.shape[0] and 0 in images.shape[1:]:  # else each trained as a blank image, silently
        raise DatasetError(
            f"{image_file}: IDX images of {images.shape[1]}x{images.shape[2]} pixels hold none"
        )
    if labels.size and int(labels.max()) >= len(classes):
        raise DatasetError(f"{label_file}: label {int(labels.max())} out of range for {len(classes)} classes")
    tensor = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, H, W)
    return RawImages(tensor, torch.from_numpy(labels.astype(np.int64)), list(classes))


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz", root / stem.replace("-idx", ".idx")):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"{root}: missing {stem} (raw or .gz)")


def existing_dir(path: str | None, dataset: str) -> Path:
    if not path:
        raise DatasetError(f"dataset {dataset!r} needs a data path (--data-path)")
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: data path does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root}: data path is not a directory")
    return root
