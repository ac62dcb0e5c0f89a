"""An image sent as the classify body itself (``curl --data-binary @cat.png``, or ``Content-Type:
image/png``) is a 400 saying how to send it: it was parsed as JSON and refused as "request body is not
valid UTF-8", which named neither the image nor the remedy. JSON and multipart bodies classify as before."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tests.repo_fixtures import build_classifier_repository, repository_client

URL = "/v1/models/lenet/classify"


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (12, 10), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with repository_client(build_classifier_repository(tmp_path_factory.mktemp("raw") / "repo")) as client:
        yield client


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [
        ("PNG", "application/x-www-form-urlencoded"),  # curl --data-binary's default
        ("JPEG", "application/octet-stream"),
        ("PNG", "image/png"),
    ],
)
def test_an_image_sent_as_the_body_is_a_400_naming_the_json_and_multipart_ways(client, fmt, content_type):
    answer = client.post(URL, content=_encoded(fmt), headers={"content-type": content_type})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error.startswith("the body is an image itself"), error
    assert '{"images": [base64' in error and "-F files=@" in error, error


def test_json_and_multipart_images_still_classify_and_other_bad_bodies_keep_their_answers(client):
    png = _encoded("PNG")
    assert client.post(URL, json={"images": [base64.b64encode(png).decode()]}).status_code == 200
    assert client.post(URL, files=[("files", ("a.png", png, "image/png"))]).status_code == 200
    not_utf8 = client.post(URL, content=b'{"images": ["\xc3"]}', headers={"content-type": "application/json"})
    assert not_utf8.status_code == 400
    assert "not valid UTF-8" in not_utf8.json()["error"], not_utf8.text
