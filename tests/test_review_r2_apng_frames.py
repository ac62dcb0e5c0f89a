"""An APNG's later frames are two chunks each (fcTL, fdAT), and Pillow reads none of them to decode the
first frame (it stops at the second frame's fcTL): a 6 000-frame animation was refused as a chunk flood
although it decodes in a millisecond. A flood Pillow does read, before that fcTL, is still a 400."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from serving.errors import BadRequest
from serving.protocol.images import declared_pixels, decode_image, png_chunk_limit

PRE = {"input_size": [8, 8], "channels": 3}
FRAMES = 6_000  # 12 000 chunks in ~390 KB: past the limit of a file of its size


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _fctl(seq: int, side: int) -> bytes:
    return _chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, side, side, 0, 0, 1, 50, 0, 0))


def apng(frames: int, *, declared: int | None = None, flood: int = 0) -> bytes:
    """An 8x8 RGB APNG of ``frames`` frames, each a 1x1 fdAT after the first (IDAT), its acTL saying
    ``declared`` frames, with ``flood`` empty tEXt-less private chunks between its IDAT and second fcTL."""
    side = 8
    rows = b"".join(b"\x00" + bytes([200, 10, 10]) * side for _ in range(side))
    one = zlib.compress(b"\x00" + bytes([10, 200, 10]))
    parts = [
        b"\x89PNG\r\n\x1a\n",
        _chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)),
        _chunk(b"acTL", struct.pack(">II", frames if declared is None else declared, 0)),
        _fctl(0, side),
        _chunk(b"IDAT", zlib.compress(rows)),
        _chunk(b"prVt", b"") * flood,
    ]
    seq = 1
    for _ in range(frames - 1):
        parts += [_fctl(seq, 1), _chunk(b"fdAT", struct.pack(">I", seq + 1) + one)]
        seq += 2
    return b"".join(parts + [_chunk(b"IEND", b"")])


def test_a_long_animation_decodes_its_first_frame():
    data = apng(FRAMES)
    assert png_chunk_limit(len(data)) < 2 * FRAMES  # as many chunks as a flood of its size
    assert Image.open(io.BytesIO(data)).n_frames == FRAMES
    array = decode_image(data, PRE, index=0, max_pixels=10**6)
    assert array.shape == (8, 8, 3) and np.all(array[..., 0] == 200)
    assert declared_pixels([data], max_pixels=10**6, budget=10**6) == [64]


def test_a_flood_before_the_second_frame_is_still_refused():
    data = apng(2, flood=40_000)
    with pytest.raises(BadRequest, match="a PNG of more than"):
        decode_image(data, PRE, index=0, max_pixels=10**6)


@pytest.mark.parametrize("declared", [1, 0])  # Pillow plays neither as an animation, so reads every chunk
def test_frames_pillow_reads_as_chunks_are_still_counted(declared):
    data = apng(FRAMES, declared=declared)
    with pytest.raises(BadRequest, match="a PNG of more than"):
        decode_image(data, PRE, index=0, max_pixels=10**6)
