"""A multipart classify form with a field classify does not read is a 422 naming it, as an unknown JSON
field is (README "Serving": "A field the schema does not name ... is a 422"): a typo such as
``-F topk=3`` was ignored, answered with the default top 5, and ``-F file=@a.png`` was told only that
``files`` parts were missing."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from serving.app import create_app
from serving.settings import Settings
from tests.repo_fixtures import SIZE, LiveServer, build_classifier_repository


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    repository = build_classifier_repository(tmp_path_factory.mktemp("docsb") / "repo")
    with LiveServer(create_app(Settings(model_repository=repository, grpc_port=0))) as live:
        yield f"http://{live.url}/v1/models/lenet/classify"


def png() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, "PNG")
    return buffer.getvalue()


def test_a_misspelt_top_k_field_is_a_422_naming_it_and_the_fields_classify_reads(url):
    response = httpx.post(url, files={"files": ("a.png", png())}, data={"topk": "3"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert "'topk'" in error and "'files'" in error and "'top_k'" in error, error


def test_a_misspelt_files_part_is_a_422_naming_it(url):
    response = httpx.post(url, files={"file": ("a.png", png())})
    assert response.status_code == 422, response.text
    assert "'file'" in response.json()["error"]


def test_the_fields_classify_reads_are_answered_as_before(url):
    response = httpx.post(
        url, files=[("files", ("a.png", png())), ("files", ("b.png", png()))], data={"top_k": "2"}
    )
    assert response.status_code == 200, response.text
    assert [len(p) for p in response.json()["predictions"]] == [2, 2]
    schema = httpx.get(url.split("/v1/")[0] + "/openapi.json").json()
    form = schema["paths"]["/v1/models/{name}/classify"]["post"]["requestBody"]["content"][
        "multipart/form-data"
    ]
    assert form["schema"]["additionalProperties"] is False
