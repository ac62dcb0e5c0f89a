"""A classify image whose base64 has line breaks or spaces is read, as browsers' ``atob`` reads it: MIME
encoders wrap lines (GNU ``base64`` without ``-w0``, Python's ``base64.encodebytes``, Java's MIME
encoder), and such an image was a 400 "not valid base64"; a ``DATA:`` scheme was too."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from serving.errors import BadRequest
from serving.protocol.images import decode_base64
from tests.repo_fixtures import SIZE, build_classifier_repository, repository_client

PIXELS = np.random.default_rng(4).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(PIXELS, "L").save(buffer, "PNG")
    return buffer.getvalue()


def wrapped(data: bytes, line_end: str = "\n") -> str:
    return base64.encodebytes(data).decode().replace("\n", line_end)


def spaced(data: bytes) -> str:
    text = base64.b64encode(data).decode()
    return " " + " ".join(text[i : i + 8] for i in range(0, len(text), 8)) + "\t\n"


@pytest.mark.parametrize(
    "text",
    [
        wrapped(png()),  # Python's encodebytes, GNU base64: 76 columns, LF
        wrapped(png(), "\r\n"),  # Java's MIME encoder, .NET's InsertLineBreaks
        spaced(png()),
        "DATA:image/png;base64," + base64.b64encode(png()).decode(),
        "data:image/png;base64,\n" + wrapped(png()),
    ],
)
def test_base64_with_whitespace_or_an_upper_case_data_scheme_decodes_to_the_image(text):
    assert decode_base64(text, index=0) == png()


@pytest.mark.parametrize(
    "text", ["*" * 8, base64.urlsafe_b64encode(bytes([251, 255] * 6)).decode(), "QUJD\u00a0"]
)
def test_other_characters_are_still_a_400(text):
    with pytest.raises(BadRequest, match=r"^image 3: not valid base64$"):
        decode_base64(text, index=3)


def test_the_classify_route_answers_a_wrapped_image_as_the_same_image_unwrapped(tmp_path):
    root = build_classifier_repository(tmp_path / "repo")
    data = png()
    with repository_client(root) as client:
        url = "/v1/models/lenet/classify"
        plain = client.post(url, json={"images": [base64.b64encode(data).decode()], "top_k": 3})
        lines = client.post(url, json={"images": [wrapped(data, "\r\n")], "top_k": 3})
    assert plain.status_code == lines.status_code == 200, lines.text
    assert lines.json() == plain.json()
