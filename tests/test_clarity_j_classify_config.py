"""A classifier whose kiln.json ``preprocessing`` lays images out otherwise than its images input takes
them (a ``channels`` of 2 or 4, or no ``preprocessing`` at all before a grey model) loads and serves
KServe v2 infer; its /v1 classify answers a 500 naming the kiln.json and the field, where every image
was a 400 blaming the client's input."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings
from tests.test_repo_g_preprocessing import GOOD, _entry, _png

V2_BODY = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 4, 4, 1], "data": [1] * 16}]}


@pytest.mark.parametrize(
    ("preprocessing", "field", "said"),
    [
        ({**GOOD, "channels": 4}, "channels", "is 4"),
        ({**GOOD, "channels": 2}, "channels", "is 2"),
        (None, "channels", "is absent, so 3"),
        ({**GOOD, "layout": "NCHW"}, "layout", "is NCHW"),
        ({**GOOD, "input_size": [8, 8]}, "input_size", "is [8, 8]"),
        ({**GOOD, "dtype": "float32"}, "dtype", "is 'float32'"),
    ],
)
def test_a_preprocessing_the_model_cannot_take_is_a_500_naming_its_kiln_json_and_v2_infer_serves(
    tmp_path, preprocessing, field, said
):
    _entry(tmp_path, "grey", preprocessing or GOOD)
    kiln_path = tmp_path / "grey" / "kiln.json"
    if preprocessing is None:
        kiln_path.write_text(
            json.dumps({k: v for k, v in json.loads(kiln_path.read_text()).items() if k != "preprocessing"})
        )
    with TestClient(create_app(Settings(model_repository=tmp_path, grpc_port=0))) as client:
        classify = client.post("/v1/models/grey/classify", json={"images": [_png()], "top_k": 1})
        infer = client.post("/v2/models/grey/infer", json=V2_BODY)
    assert classify.status_code == 500, classify.text
    assert f"{kiln_path}: 'preprocessing.{field}' {said}" in classify.json()["error"]
    assert infer.status_code == 200, infer.text


def test_a_preprocessing_that_fits_still_classifies(tmp_path):
    _entry(tmp_path, "grey", GOOD)
    with TestClient(create_app(Settings(model_repository=tmp_path, grpc_port=0))) as client:
        classify = client.post("/v1/models/grey/classify", json={"images": [_png()], "top_k": 1})
    assert classify.status_code == 200, classify.text
    assert classify.json()["predictions"][0][0]["index"] == 2
