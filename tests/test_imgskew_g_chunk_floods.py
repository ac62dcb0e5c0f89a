"""A PNG of tens of thousands of empty chunks, or a JPEG header of as many empty marker segments, is a 400
before Pillow reads them: Pillow walks each in Python (~8 us a PNG chunk to open and as much to decode,
~4 us a JPEG segment), so 64 MiB of them held a decode slot for over a minute, and the JPEG guard walked
segments only in files of more than 100 start-of-scan bytes. Files as encoders write them still decode."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from serving.errors import BadRequest
from serving.protocol.images import MAX_JPEG_SEGMENTS, MAX_PNG_CHUNKS, declared_pixels, decode_image
from tests.repo_fixtures import SIZE, build_classifier_repository, repository_client

PRE = {"input_size": [SIZE, SIZE], "channels": 1}
FLOOD = 2 * MAX_PNG_CHUNKS  # chunks or segments: past the limit of a file of their size


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def _grey(side: int = 8) -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (side, side), dtype=np.uint8))


def png_with_empty_chunks(kind: bytes, count: int) -> bytes:
    """A small grey PNG with ``count`` empty chunks of ``kind`` after its header (IDAT: after its data)."""
    png = _png(_grey())
    at = png.rfind(b"IEND") - 4 if kind == b"IDAT" else 8 + 25  # before IEND, or after IHDR
    return png[:at] + _chunk(kind, b"") * count + png[at:]


def jpeg_with_empty_segments(marker: bytes, count: int) -> bytes:
    """A small grey JPEG with ``count`` empty (length 2) segments of ``marker`` right after SOI."""
    buffer = io.BytesIO()
    _grey().save(buffer, "JPEG")
    data = buffer.getvalue()
    return data[:2] + (marker + b"\x00\x02") * count + data[2:]


def png_in_idat_chunks(img: Image.Image, chunk_bytes: int) -> bytes:
    """``img`` as a PNG whose compressed pixels are cut into IDAT chunks of ``chunk_bytes`` (libpng's 8 KiB)."""
    png = _png(img)
    head_end, tail_start = png.find(b"IDAT") - 4, png.rfind(b"IEND") - 4
    pixels, at = b"", head_end
    while at < tail_start:  # Pillow's own IDATs, joined
        length = int.from_bytes(png[at : at + 4], "big")
        pixels += png[at + 8 : at + 8 + length]
        at += 12 + length
    cut = b"".join(_chunk(b"IDAT", pixels[i : i + chunk_bytes]) for i in range(0, len(pixels), chunk_bytes))
    return png[:head_end] + cut + png[tail_start:]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(png_with_empty_chunks(b"prVt", FLOOD), id="png-private-chunks-before-the-pixels"),
        pytest.param(png_with_empty_chunks(b"tEXt", FLOOD), id="png-text-chunks-before-the-pixels"),
        pytest.param(png_with_empty_chunks(b"IDAT", FLOOD), id="png-empty-idat-chunks"),
    ],
)
def test_a_png_of_thousands_of_empty_chunks_is_a_400_naming_its_chunks_before_its_header_is_read(data):
    with pytest.raises(BadRequest, match=r"^image 2: a PNG of more than \d+ chunks"):
        declared_pixels([_png(_grey()), _png(_grey()), data], max_pixels=10**6, budget=10**7)
    with pytest.raises(BadRequest, match=r"^image 0: a PNG of more than \d+ chunks"):
        decode_image(data, PRE, index=0, max_pixels=10**6)


@pytest.mark.parametrize("marker", [b"\xff\xfe", b"\xff\xe1"], ids=["comments", "app1"])
def test_a_jpeg_header_of_thousands_of_empty_segments_is_a_400_though_it_has_one_scan(marker):
    data = jpeg_with_empty_segments(marker, MAX_JPEG_SEGMENTS + 1)
    with pytest.raises(
        BadRequest, match=f"^image 0: a JPEG of more than {MAX_JPEG_SEGMENTS} marker segments"
    ):
        declared_pixels([data], max_pixels=10**6, budget=10**7)


def test_pngs_cut_as_encoders_cut_them_and_headers_below_the_limits_decode_as_before():
    noise = Image.fromarray(np.random.default_rng(4).integers(0, 256, (256, 320, 3), dtype=np.uint8))
    want = decode_image(_png(noise), PRE, index=0, max_pixels=10**6)
    for chunk_bytes in (8192, 4096):  # libpng's IDATs, and half of them: far more chunks than a flood's share
        cut = png_in_idat_chunks(noise, chunk_bytes)
        np.testing.assert_array_equal(decode_image(cut, PRE, index=0, max_pixels=10**6), want)
    grey = decode_image(_png(_grey()), PRE, index=0, max_pixels=10**6)
    few = png_with_empty_chunks(b"prVt", MAX_PNG_CHUNKS // 2)  # limit: MAX_PNG_CHUNKS and one per 4 KiB
    np.testing.assert_array_equal(decode_image(few, PRE, index=0, max_pixels=10**6), grey)
    jpeg = jpeg_with_empty_segments(b"\xff\xfe", MAX_JPEG_SEGMENTS - 10)  # the image's own segments: < 10
    assert decode_image(jpeg, PRE, index=0, max_pixels=10**6).shape == (SIZE, SIZE, 1)


def test_the_classify_route_answers_a_flood_400_and_classifies_the_next_request(tmp_path):
    root = build_classifier_repository(tmp_path / "repo")
    url = "/v1/models/lenet/classify"
    flood = png_with_empty_chunks(b"IDAT", FLOOD)
    with repository_client(root) as client:
        refused = client.post(url, files=[("files", ("flood.png", flood, "image/png"))])
        served = client.post(url, json={"images": [base64.b64encode(_png(_grey())).decode()]})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"].startswith("image 0: a PNG of more than"), refused.text
    assert served.status_code == 200, served.text
