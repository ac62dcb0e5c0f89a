"""A KServe v2 infer on a translator's ``<name>`` through ``--backend triton --triton-translate triton``
is refused as the gateway's own translators refuse it (the embedded backend, ``--triton-translate
scheduler``, and the REST route through Triton): the same 413 / 422 / 400 and message, before Triton is
called. It was Triton's every-mistake 400 (gRPC ``INVALID_ARGUMENT``), in its server's own words for a
batch or a shape ("inference request batch-size must be <= 64", "expected 1 string elements ... got 0")
where the gateway says "65 texts in one request; the limit is 64" (413) or "texts must hold at least one
text" (422)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from serving.errors import BadRequest, PayloadTooLarge, UnprocessableInput

NAME = "transformer"
LONG = "one two three four five six seven " * 12  # past the tiny translator's 64 positions


@pytest.fixture(scope="module")
def repository(transformer_repository: Path) -> Path:
    return transformer_repository


def _request(texts: list[str], **parameters: object):
    from serving.execution.base import InferRequest

    tensor = np.array([[t.encode()] for t in texts], dtype=np.object_).reshape(len(texts), 1)
    return InferRequest(NAME, {"text": tensor}, parameters=parameters or {})


CASES = [
    (["forty-two"] * 65, {}, PayloadTooLarge, "65 texts in one request; the limit is 64"),
    ([], {}, UnprocessableInput, "texts must hold at least one text"),
    (["   "], {}, UnprocessableInput, "texts[0] is empty or only whitespace"),
    (["x" * 1001], {}, PayloadTooLarge, "texts[0] has 1001 characters; the limit is 1000"),
    (["forty-two", LONG], {}, PayloadTooLarge, "texts[1] is "),
    (["forty-two"], {"beam_size": 0}, UnprocessableInput, "invalid decoding options: beam_size must be"),
    (["forty-two"], {"beam_size": 2, "n_best": 3}, UnprocessableInput, "invalid decoding options: n_best"),
    (["forty-two"], {"beam_size": "abc"}, BadRequest, "parameter 'beam_size' must be an integer"),
]


class TritonsNameModel:
    """A backend whose own ``<name>`` model decodes (Triton's, ``--triton-translate triton``): it
    answers every request, so a refusal can only be the gateway's."""

    def __init__(self) -> None:
        self.calls = 0

    async def infer(self, request):  # noqa: ANN001, ANN201
        from serving.execution.base import InferResponse

        self.calls += 1
        n = len(request.inputs["text"])
        return InferResponse(NAME, "1", {"translation": np.array([[b"x"]] * n, dtype=np.object_)})


@pytest.mark.parametrize(("texts", "parameters", "kind", "message"), CASES)
def test_v2_infer_on_a_translator_triton_decodes_is_refused_as_the_gateway_refuses_it(
    repository: Path, texts, parameters, kind, message
) -> None:
    from serving.execution.repository import Repository
    from serving.gateway import Gateway

    backend = TritonsNameModel()
    gateway = Gateway(backend, Repository(repository))  # type: ignore[arg-type]
    assert gateway.translators is None  # the backend translates
    with pytest.raises(kind) as refused:
        asyncio.run(gateway.infer(_request(texts, **parameters)))
    assert type(refused.value) is kind and str(refused.value).startswith(message), str(refused.value)
    assert backend.calls == 0  # refused before Triton is called


def test_a_good_v2_request_still_reaches_tritons_model(repository: Path) -> None:
    from serving.execution.repository import Repository
    from serving.gateway import Gateway

    backend = TritonsNameModel()
    gateway = Gateway(backend, Repository(repository))  # type: ignore[arg-type]
    answer = asyncio.run(gateway.infer(_request(["forty-two"] * 64, beam_size="4")))
    assert backend.calls == 1 and answer.outputs["translation"].shape == (64, 1)
