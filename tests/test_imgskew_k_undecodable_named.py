"""Bytes the classify route cannot read are a 400 naming what they are, and thin images a 413 from
their header. An empty classify body said "not valid JSON: Expecting value: line 1 column 1 (char 0)".

Every file Pillow did not identify as PNG or JPEG was "image 0: not a decodable PNG/JPEG image": an
empty part, a GIF or WebP (which training's folder reader takes), an iPhone's HEIC, a PNG cut short
in its header, base64 text sent as a multipart part or encoded twice in JSON, an HTML error page. A
user could tell none of these from a corrupt file. And an image 1 pixel wide and 16 777 216 tall (a
32 KB PNG, inside ``--max-image-pixels``) held 447 MB and 1.5 s of a decode slot, where the README
sizes a decode at ~90 MB: Pillow's decode and resize cost by an image's longest side too.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from serving.errors import BadRequest, PayloadTooLarge
from serving.protocol.images import MAX_SIDE, declared_pixels, decode_image
from tests.repo_fixtures import build_classifier_repository, repository_client

PRE = {"input_size": [16, 16], "channels": 1}
URL = "/v1/models/lenet/classify"


def _encoded(fmt: str, size: tuple[int, int] = (10, 12), **options) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(3).integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(buffer, fmt, **options)
    return buffer.getvalue()


def _thin_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 9).save(buffer, "PNG")
    return buffer.getvalue()


def _decoded(data: bytes) -> np.ndarray:
    return decode_image(data, PRE, index=0, max_pixels=1 << 24)


CASES = {
    "empty": (b"", "image 0: empty (0 bytes)"),
    "gif": (_encoded("GIF"), "image 0: a GIF image; classify reads PNG and JPEG only: convert it to PNG"),
    "webp": (_encoded("WEBP"), "image 0: a WEBP image; classify reads PNG and JPEG only"),
    "heic": (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "image 0: a HEIC/HEIF image; classify"),
    "png_header_cut": (
        _encoded("PNG")[:12],
        "image 0: a PNG whose header is corrupt or cut short (12 bytes)",
    ),
    "base64_png": (base64.b64encode(_encoded("PNG")), "image 0: base64 text, not an image's bytes"),
    "html": (
        b"<!DOCTYPE html><html><body>502</body></html>",
        "image 0: not a PNG or JPEG image (it starts b'<!DOC",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bytes_that_are_no_png_or_jpeg_are_a_400_naming_what_they_are(case):
    data, message = CASES[case]
    for read in (_decoded, lambda d: declared_pixels([d], max_pixels=1 << 24, budget=1 << 28)):
        with pytest.raises(BadRequest) as refused:
            read(data)
        assert refused.value.message.startswith(message), refused.value.message


def test_an_image_with_a_side_over_the_limit_is_a_413_from_its_header_and_thin_ones_below_decode():
    tall = _thin_png(1, MAX_SIDE + 1)
    for read in (_decoded, lambda d: declared_pixels([d], max_pixels=1 << 24, budget=1 << 28)):
        with pytest.raises(PayloadTooLarge, match=rf"^image 0: 1x{MAX_SIDE + 1} has a side over {MAX_SIDE}"):
            read(tall)
    wide = _thin_png(MAX_SIDE + 1, 1)
    with pytest.raises(PayloadTooLarge, match="crop or downscale it"):
        _decoded(wide)
    assert _decoded(_thin_png(3, 5000)).shape == (16, 16, 1)  # thin, but no side past the limit
    assert _decoded(_encoded("JPEG", (300, 20))).shape == (16, 16, 1)


def test_the_route_answers_each_with_its_status_and_classifies_the_next_image(tmp_path):
    with repository_client(build_classifier_repository(tmp_path / "repo")) as client:
        gif = client.post(URL, files=[("files", ("cat.png", CASES["gif"][0], "image/png"))])
        assert gif.status_code == 400 and gif.json()["error"].startswith(CASES["gif"][1]), gif.text
        for content_type in ("application/json", None):  # curl -X POST with no data: no content type
            headers = {"content-type": content_type} if content_type else {}
            nobody = client.post(URL, content=b"", headers=headers)
            assert nobody.status_code == 400, nobody.text
            assert nobody.json()["error"].startswith("the body is empty (0 bytes); classify takes JSON"), (
                nobody.text
            )
        empty = client.post(URL, json={"images": [""]})
        assert empty.status_code == 400 and empty.json()["error"] == "image 0: empty (0 bytes)", empty.text
        twice = client.post(URL, json={"images": [base64.b64encode(CASES["base64_png"][0]).decode()]})
        assert twice.status_code == 400 and "encoded twice" in twice.json()["error"], twice.text
        tall = base64.b64encode(_thin_png(1, MAX_SIDE + 1)).decode()
        thin = client.post(URL, json={"images": [tall]})
        assert thin.status_code == 413 and "has a side over" in thin.json()["error"], thin.text
        good = client.post(URL, json={"images": [base64.b64encode(_encoded("PNG")).decode()]})
        assert good.status_code == 200, good.text
