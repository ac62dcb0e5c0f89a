"""The JPEG scan limit counts the scans a decoder reads, not every 0xFF 0xDA pair of the file: binary
data in segments no scan is in (an ICC profile, EXIF maker notes) or after the image's EOI (a Motion
Photo's MP4, which phones append to the JPEG: ~1 such pair per 64 KB of video) holds them too, and
such valid photos were refused as JPEGs of 100+ scans."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from serving.errors import BadRequest
from serving.protocol.images import MAX_JPEG_SCANS, MAX_JPEG_SEGMENTS, decode_image, jpeg_scans
from tests.repo_fixtures import SIZE
from tests.test_images_d_jpeg_scans import progressive, with_scans

PRE = {"input_size": [SIZE, SIZE], "channels": 1}
SOS_BYTES = b"\xff\xda\x00\x08"  # a start-of-scan marker and a length, as binary data may hold them


def photo(**save: object) -> bytes:
    pixels = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", **save)
    return buffer.getvalue()


def test_a_motion_photo_whose_video_holds_many_start_of_scan_bytes_decodes():
    video = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    data = photo() + video + SOS_BYTES * 150  # the MP4 after EOI: never read by a decoder
    assert data.count(b"\xff\xda") > MAX_JPEG_SCANS
    assert jpeg_scans(data, index=0) == 1
    assert decode_image(data, PRE, index=0, max_pixels=1 << 24).shape == (SIZE, SIZE, 1)


def test_an_icc_profile_holding_many_start_of_scan_bytes_decodes():
    data = photo(icc_profile=b"\x00" * 128 + SOS_BYTES * 500)  # an APP2 segment's binary data
    assert data.count(b"\xff\xda") > MAX_JPEG_SCANS
    assert decode_image(data, PRE, index=1, max_pixels=1 << 24).shape == (SIZE, SIZE, 1)


def test_scans_are_counted_as_a_decoder_reads_them_whatever_else_the_file_holds():
    base = progressive()
    many = with_scans(base, 300)
    comment = b"\xff\xfe" + (2 + len(SOS_BYTES * 40)).to_bytes(2, "big") + SOS_BYTES * 40
    hidden = many[:2] + comment + many[2:] + SOS_BYTES * 40  # a COM segment and a trailer
    assert jpeg_scans(many, index=0) == jpeg_scans(hidden, index=0) == 300
    assert jpeg_scans(base, index=0) == base.count(b"\xff\xda")  # as encoders write them
    with pytest.raises(BadRequest, match=r"^image 4: a JPEG of 300 scans; at most 100 are decoded"):
        decode_image(hidden, PRE, index=4, max_pixels=1 << 24)
    at_limit = with_scans(base, MAX_JPEG_SCANS) + SOS_BYTES * 40
    assert decode_image(at_limit, PRE, index=0, max_pixels=1 << 24).shape == (SIZE, SIZE, 1)


def test_a_jpeg_of_more_marker_segments_than_a_photo_has_is_a_400_before_it_is_walked_further():
    tiny = b"\xff\xfe\x00\x02" * (MAX_JPEG_SEGMENTS + 1)  # empty comments: 4 bytes a step
    data = photo()
    data = data[:2] + tiny + data[2:] + SOS_BYTES * (MAX_JPEG_SCANS + 1)
    with pytest.raises(
        BadRequest, match=rf"^image 0: a JPEG of more than {MAX_JPEG_SEGMENTS} marker segments$"
    ):
        decode_image(data, PRE, index=0, max_pixels=1 << 24)
