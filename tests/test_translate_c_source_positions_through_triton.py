"""The REST translate route through Triton's ``<name>`` model (``--backend triton --triton-translate
triton``) refuses a text longer than the model's positions as the gateway's own translator does: a 413
naming the text's place in the request, before Triton is called. It was Triton's 400, naming the
text's place in the part of the request that model got (the 21st text of a request cut into parts of
16 was ``texts[4]``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.decoding.translator import source_tokenizer, translator_from_entry
from serving.errors import BadRequest, PayloadTooLarge
from serving.execution.base import InferRequest, InferResponse
from serving.metrics import GatewayMetrics
from serving.protocol.translate import TranslateRequest, _max_positions, _via_infer

NAME = "transformer"
PART = 16  # <name>'s max_batch_size in the tests' export: the route sends the texts in parts this big
LONG = "one two three four five six seven " * 12  # past the tiny translator's 64 positions
TEXTS = ["forty-two"] * 20 + [LONG]  # the long one is texts[20], the fifth text of the second part


@pytest.fixture(scope="module")
def repository(transformer_repository: Path) -> Path:
    return transformer_repository


class NameModel:
    """Triton's ``<name>`` model as the route meets it: each part measured on its own, a text over the
    positions refused as Triton's INVALID_ARG reaches the gateway (a 400 naming its place in the part)."""

    def __init__(self, tokenizer: Any, positions: int) -> None:
        self.tokenizer, self.positions, self.parts = tokenizer, positions, []

    async def infer(self, request: InferRequest) -> InferResponse:
        texts = [t.decode() for t in request.inputs["text"].reshape(-1)]
        self.parts.append(texts)
        for i, encoding in enumerate(self.tokenizer.encode_batch(texts)):
            if len(encoding.ids) + 1 > self.positions:
                length = len(encoding.ids) + 1
                raise BadRequest(
                    f"Triton: texts[{i}] is {length} tokens long; the model takes {self.positions}"
                )
        text = np.array([[b"x"] for _ in texts], dtype=np.object_)
        return InferResponse(request.model, "1", {"translation": text})


def _gateways_own_refusal(repository: Path) -> PayloadTooLarge:
    kiln = json.loads((repository / NAME / "kiln.json").read_text())

    def unused(feed):  # noqa: ANN001, ANN202 - the text is refused before any model call
        raise AssertionError("no model call for a refused text")

    own = translator_from_entry(repository / NAME, kiln, unused, unused)
    with pytest.raises(PayloadTooLarge) as refused:
        asyncio.run(own.translate(TEXTS, TranslateRequest(texts=TEXTS).options()))
    return refused.value


def test_a_text_over_the_positions_is_the_gateways_413_naming_its_place_in_the_request(
    repository: Path,
) -> None:
    kiln = json.loads((repository / NAME / "kiln.json").read_text())
    positions = _max_positions(kiln)
    tokenizer = source_tokenizer(repository / NAME / kiln["translator"]["source_tokenizer"])
    backend = NameModel(tokenizer, positions)
    body = TranslateRequest(texts=TEXTS)
    with pytest.raises(PayloadTooLarge) as through:
        asyncio.run(_via_infer(backend, GatewayMetrics(), NAME, body, PART, positions, tokenizer))  # type: ignore[arg-type]
    own = _gateways_own_refusal(repository)
    assert str(through.value) == str(own) and str(own).startswith("texts[20] is ")
    assert backend.parts == []  # refused before Triton is called


def test_the_route_over_triton_refuses_a_text_over_the_positions_before_calling_it(
    repository: Path, nowhere: str
) -> None:
    """Triton is not reachable here: the refusal comes before any call to it (it was a 503 here, and a
    400 naming ``texts[4]`` with Triton up)."""
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.execution.repository import Repository
    from serving.execution.triton import TritonBackend
    from serving.settings import Settings

    settings = Settings(
        model_repository=repository,
        backend="triton",
        triton_url=nowhere,
        grpc_port=0,
        triton_translate="triton",
    )
    backend = TritonBackend(
        nowhere, repository=Repository(repository), translate="triton", probe_timeout_s=0.5
    )
    with TestClient(create_app(settings, backend=backend)) as client:
        refused = client.post(f"/v1/models/{NAME}/translate", json={"texts": TEXTS})
    assert refused.status_code == 413, refused.text
    assert refused.json()["error"] == str(_gateways_own_refusal(repository))


def test_the_source_tokenizer_is_read_again_when_a_re_export_replaces_its_file(tmp_path):
    """The route's tokenizer is cached per version of its file: a translator exported again under the same
    path (a new vocabulary) is measured with its new tokenizer, not the one first read."""
    import os

    from tokenizers import Tokenizer, models, pre_tokenizers

    from serving.decoding.translator import source_tokenizer

    def write(vocab: dict[str, int]) -> None:
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.save(str(path))

    path = tmp_path / "source_tokenizer.json"
    write({"<unk>": 0, "a": 1})
    first = source_tokenizer(path)
    assert first.encode("a b").ids == [1, 0]
    write({"<unk>": 0, "a": 1, "b": 2})
    os.utime(path, ns=(1, 1))  # a new version, whatever the clock's resolution
    assert source_tokenizer(path).encode("a b").ids == [1, 2]
