"""A progressive JPEG of more than 100 scans is a 400 before it is decoded: each scan passes over every
block of the image and a scan over a flat band is a few dozen bytes, so 1 000 of them in 99 KB held a
decode thread 3.8 s at 4096x4096, and a body at the 64 MiB limit would have held it for hours."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from serving.errors import BadRequest
from serving.protocol.images import MAX_JPEG_SCANS, decode_image
from tests.repo_fixtures import SIZE, build_classifier_repository, repository_client

PRE = {"input_size": [SIZE, SIZE], "channels": 1}


def progressive(mode: str = "L", side: int = 64) -> bytes:
    pixels = np.random.default_rng(5).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, "JPEG", progressive=True)
    return buffer.getvalue()


def segments(data: bytes) -> list[bytes]:
    """``data``'s marker segments after SOI, a scan with its entropy-coded data, EOI last."""
    out, i = [], 2
    while data[i + 1] != 0xD9:
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if data[i + 1] == 0xDA:  # the scan's data runs to the next marker (not FF00, not RSTn)
            while not (data[end] == 0xFF and data[end + 1] != 0 and not 0xD0 <= data[end + 1] <= 0xD7):
                end += 1
        out.append(data[i:end])
        i = end
    return [*out, data[i : i + 2]]


def with_scans(data: bytes, scans: int) -> bytes:
    """``data`` with its last scan (an AC band: a few bytes) repeated until it has ``scans`` scans."""
    parts = segments(data)
    sos = [p for p in parts if p[1] == 0xDA]
    return b"\xff\xd8" + b"".join(parts[:-1]) + sos[-1] * (scans - len(sos)) + parts[-1]


def test_a_jpeg_of_many_scans_is_a_400_naming_them_before_it_is_decoded():
    data = with_scans(progressive(), 1000)
    with pytest.raises(BadRequest, match=r"^image 2: a JPEG of 1000 scans; at most 100 are decoded"):
        decode_image(data, PRE, index=2, max_pixels=1 << 24)


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
def test_progressive_jpegs_as_encoders_write_them_and_up_to_the_limit_decode(mode):
    data = progressive(mode)
    assert len([p for p in segments(data) if p[1] == 0xDA]) < 20
    for image in (data, with_scans(data, MAX_JPEG_SCANS)):
        assert decode_image(image, PRE, index=0, max_pixels=1 << 24).shape == (SIZE, SIZE, 1)


def test_the_classify_route_answers_the_400_and_then_classifies(tmp_path):
    root = build_classifier_repository(tmp_path / "repo")
    url = "/v1/models/lenet/classify"
    with repository_client(root) as client:
        refused = client.post(url, files=[("files", ("a.jpg", with_scans(progressive(), 500), "image/jpeg"))])
        served = client.post(url, json={"images": [base64.b64encode(progressive()).decode()]})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"].startswith("image 0: a JPEG of 500 scans")
    assert served.status_code == 200, served.text
