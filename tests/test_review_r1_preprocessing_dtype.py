"""A kiln.json ``preprocessing.dtype`` that numpy reads as Python (``","``, ``"(2,3"``: a structured
dtype's syntax) raised SyntaxError out of the load-time check, so the whole gateway failed to start
("invalid syntax (<unknown>, line 1)", naming neither file nor field) where the entry alone should
fail its load naming the field, as for any other dtype numpy does not know."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.execution.entry_config import preprocessing_problems
from serving.settings import Settings
from tests.test_repo_g_preprocessing import GOOD, _entry, _png


@pytest.mark.parametrize("dtype", [",", "(2,3", "(,)f4"])
def test_a_dtype_numpy_parses_as_python_is_named(dtype):
    assert preprocessing_problems({**GOOD, "dtype": dtype}) == [
        f"'preprocessing.dtype' must name a numeric dtype (uint8, float32...), got {dtype!r}"
    ]


def test_such_a_dtype_fails_its_entry_alone_and_the_others_serve(tmp_path):
    _entry(tmp_path, "good", GOOD)
    _entry(tmp_path, "broken", {**GOOD, "dtype": ","})
    with TestClient(create_app(Settings(model_repository=tmp_path, grpc_port=0))) as client:
        good = client.post("/v1/models/good/classify", json={"images": [_png()], "top_k": 1})
        broken = client.post("/v1/models/broken/classify", json={"images": [_png()], "top_k": 1})
    assert good.status_code == 200, good.text
    assert broken.status_code in (404, 503)
    assert "broken/kiln.json: 'preprocessing.dtype'" in broken.json()["error"]
