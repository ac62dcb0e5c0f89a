"""A negative token id (or position) sent straight to a translator's ``<name>_encoder`` or
``<name>_decoder`` is refused with a 400 naming the input, by the embedded backend and by Triton's
python flavour alike: ONNX's Gather reads a negative index from the end of the embedding table, so
``-1`` (a padding sentinel in many pipelines) was embedded as the vocabulary's last token and
answered 200 on both backends, while an id past the vocabulary was ONNX Runtime's 400."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.test_translate_triton import NAME, exported, triton  # noqa: F401 (module fixtures)

REFUSAL = "input {input!r}: {what} -1 is negative; model {model!r} takes {what}s from 0"


def _feeds(repository: Path, model: str) -> dict[str, np.ndarray]:
    """A well-formed request to ``model`` (1 row, 3 source tokens, 2 cached positions), as a client
    shapes it from the config (a per-row scalar as its [1])."""
    import onnxruntime as ort

    from serving.execution.repository import Repository
    from serving.execution.validation import input_rules

    entry = Repository(repository).get(model)
    session = ort.InferenceSession(str(entry.model_file("")), providers=["CPUExecutionProvider"])
    rules = input_rules(entry, {i.name: list(i.shape) for i in session.get_inputs()})
    sizes = {"past_len": 2, "src_len": 3}
    feeds = {}
    for i in session.get_inputs():
        rule = rules[i.name]
        shape = (
            [1, *rule.shape[1:]]
            if rule.reshape is not None
            else [sizes.get(d, 1) if isinstance(d, str) else d for d in i.shape]
        )
        feeds[i.name] = np.ones(shape, rule.dtype)  # token 1, position 1, mask True, place... 1
    if "row_place" in feeds:
        feeds["row_place"][:] = 0  # the one encoder row
    return feeds


CASES = [  # (entry, input, what its values are)
    (f"{NAME}_encoder", "src_ids", "token id"),
    (f"{NAME}_decoder", "tokens", "token id"),
    (f"{NAME}_decoder", "positions", "position"),
]


def test_the_embedded_backend_refuses_a_negative_token_id_or_position(transformer_repository: Path) -> None:
    from serving.errors import BadRequest
    from serving.execution.repository import Repository
    from serving.execution.validation import validate_inputs

    for model, name, what in CASES:
        entry = Repository(transformer_repository).get(model)
        feeds = _feeds(transformer_repository, model)
        validate_inputs(entry, feeds)  # well-formed: taken
        feeds[name] = np.full_like(feeds[name], -1)
        with pytest.raises(BadRequest) as refused:
            validate_inputs(entry, feeds)
        assert refused.value.message.startswith(REFUSAL.format(input=name, what=what, model=model))


@pytest.fixture(scope="module")
def gateways(exported: Path, triton) -> Iterator[dict]:  # noqa: F811
    """The embedded gateway and one over this module's Triton (``--backend triton``), in-process."""
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import Settings

    repository = exported / "model_repository"
    over = {"backend": "triton", "triton_url": triton.grpc_url}
    with (
        TestClient(create_app(Settings(model_repository=repository, grpc_port=0))) as embedded,
        TestClient(create_app(Settings(model_repository=repository, grpc_port=0, **over))) as tritons,
    ):
        yield {"embedded": embedded, "triton": tritons}


def _v2_body(feeds: dict[str, np.ndarray]) -> dict:
    from serving.execution.datatypes import datatype_of

    return {
        "inputs": [
            {"name": k, "datatype": datatype_of(v), "shape": list(v.shape), "data": v.reshape(-1).tolist()}
            for k, v in feeds.items()
        ]
    }


@pytest.mark.triton
@pytest.mark.parametrize(("model", "name", "what"), CASES)
def test_a_negative_token_id_gets_the_same_400_through_triton_as_on_the_embedded_backend(
    gateways: dict,
    exported: Path,  # noqa: F811 (the fixture imported above)
    model: str,
    name: str,
    what: str,  # noqa: F811
) -> None:
    feeds = _feeds(exported / "model_repository", model)
    for backend, client in gateways.items():
        good = client.post(f"/v2/models/{model}/infer", json=_v2_body(feeds))
        assert good.status_code == 200, (backend, good.text)
        bad = client.post(
            f"/v2/models/{model}/infer", json=_v2_body({**feeds, name: np.full_like(feeds[name], -1)})
        )
        assert bad.status_code == 400, (backend, bad.text)
        # Triton's words come back prefixed "Triton: ", as its every other refusal
        assert REFUSAL.format(input=name, what=what, model=model) in bad.json()["error"], backend
        again = client.post(f"/v2/models/{model}/infer", json=_v2_body(feeds))
        assert again.status_code == 200, (backend, again.text)  # the entry serves on
