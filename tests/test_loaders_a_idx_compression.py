"""MNIST-style IDX files are read compressed or not by their bytes, whatever their name says, and a
damaged gzip stream is one line naming the file: zlib's error is no OSError and escaped the reader as
a traceback, and a ``.gz`` a browser had already inflated (keeping the name) was "Not a gzipped file"."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from training.data.image_formats import DatasetError, read_mnist

IMAGES = (np.arange(6 * 28 * 28) % 7 * 30).astype(np.uint8).reshape(6, 28, 28)  # compressible: Huffman blocks
LABELS = np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)


def idx(magic: int, array: np.ndarray) -> bytes:
    """An IDX file's bytes: magic, big-endian dimensions, then the uint8 payload."""
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def write_pair(root, *, suffix: str, compress: bool) -> None:
    for stem, magic, array in (
        ("train-images-idx3-ubyte", 0x803, IMAGES),
        ("train-labels-idx1-ubyte", 0x801, LABELS),
    ):
        data = idx(magic, array)
        (root / (stem + suffix)).write_bytes(gzip.compress(data, mtime=0) if compress else data)


@pytest.mark.parametrize(
    ("suffix", "compress"),
    [(".gz", True), ("", False), (".gz", False), ("", True)],
    ids=["gz-named-gz", "raw-named-raw", "raw-named-gz", "gz-named-raw"],
)
def test_idx_files_read_alike_whatever_their_name_says(tmp_path, suffix, compress):
    write_pair(tmp_path, suffix=suffix, compress=compress)
    raw = read_mnist(str(tmp_path))
    assert raw.labels.tolist() == LABELS.tolist()
    assert np.array_equal(raw.images[:, 0].numpy(), IMAGES)


def test_a_damaged_gzip_stream_is_one_error_naming_the_file(tmp_path):
    write_pair(tmp_path, suffix=".gz", compress=True)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    damaged = bytearray(images.read_bytes())
    for i in range(20, 60):  # inside the deflate stream, past the gzip header
        damaged[i] ^= 0x5A
    images.write_bytes(bytes(damaged))
    with pytest.raises(DatasetError, match=rf"^{images}: cannot read \("):
        read_mnist(str(tmp_path))


def test_a_gzip_file_cut_short_is_one_error_naming_the_file(tmp_path):
    write_pair(tmp_path, suffix=".gz", compress=True)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-12])  # into the deflate stream: its trailer is 8 bytes
    with pytest.raises(DatasetError, match=rf"^{images}: cannot read \("):
        read_mnist(str(tmp_path))
