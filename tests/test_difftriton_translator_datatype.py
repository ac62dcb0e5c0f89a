"""A KServe v2 request whose translator ``text`` input is not BYTES is refused naming the input and its
datatype, as a classifier's input of the wrong datatype is (and as Triton refuses it: "inference input
'text' data-type is 'UINT8', but model 'transformer' expects 'BYTES'"). It was "texts[0] must be BYTES
(a UTF-8 string), got uint8": a numpy type, and ``texts``, a field of the REST route the client never sent."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from serving.errors import BadRequest

NAME = "transformer"
REFUSAL = "model 'transformer': input 'text' expects datatype BYTES, got "


class TritonsNameModel:
    """A backend whose own ``<name>`` model decodes (Triton's, ``--triton-translate triton``)."""

    def __init__(self) -> None:
        self.calls = 0

    async def infer(self, request):  # noqa: ANN001, ANN201
        self.calls += 1
        raise AssertionError("a refused request reached the backend")


@pytest.mark.parametrize(
    ("tensor", "datatype"), [(np.zeros((1, 1), np.uint8), "UINT8"), (np.ones((2, 1), np.float32), "FP32")]
)
def test_a_non_bytes_text_input_is_refused_naming_its_datatype_before_the_backend(
    transformer_repository: Path, tensor: np.ndarray, datatype: str
) -> None:
    from serving.execution.base import InferRequest
    from serving.execution.repository import Repository
    from serving.gateway import Gateway

    backend = TritonsNameModel()
    gateway = Gateway(backend, Repository(transformer_repository))  # type: ignore[arg-type]
    with pytest.raises(BadRequest) as refused:
        asyncio.run(gateway.infer(InferRequest(NAME, {"text": tensor})))
    assert str(refused.value) == REFUSAL + datatype
    assert backend.calls == 0


def test_the_embedded_gateway_answers_a_uint8_text_with_that_400(
    transformer_repository: Path,
) -> None:
    from tests.repo_fixtures import repository_client

    body = {"inputs": [{"name": "text", "datatype": "UINT8", "shape": [1, 1], "data": [7]}]}
    good = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["forty-two"]}]}
    with repository_client(transformer_repository) as client:
        answer = client.post(f"/v2/models/{NAME}/infer", json=body)
        assert answer.status_code == 400, answer.text
        assert answer.json() == {"error": REFUSAL + "UINT8"}
        taken = client.post(f"/v2/models/{NAME}/infer", json=good)  # a good one: answered as before
        assert taken.status_code == 200, taken.text
        assert taken.json()["outputs"][0]["datatype"] == "BYTES"
