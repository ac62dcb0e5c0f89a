"""Small inconsistencies between the protocols, checked against each other and against Triton 2.51: how a
text's errors name it, an integer parameter past 64 bits on generate, the size of a refused value in
its error, a bool as a search's alpha, and the statistics of a model whose load failed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.decoding.options import BeamConfig, DecodingOptions, check_options, options_from_parameters
from serving.decoding.translator import Translator
from serving.errors import BadRequest, ServingError, UnprocessableInput
from serving.execution.base import InferRequest
from serving.protocol.generate import generate_request
from serving.protocol.v2_codec import parse_infer
from serving.settings import Settings
from tests.repo_fixtures import write_entry_without_model, write_onnx_entry
from tests.test_generate_hunt import TRANSLATOR
from tests.test_triton_leftovers import _config, _double

HUGE = int("9" * 300)
PAST_FLOATS = int("9" * 400)  # math.isfinite raises OverflowError on it


def _translator() -> Translator:
    """A translator whose requests are refused before any decoding (no scheduler is ever asked)."""
    spec = SimpleNamespace(max_positions=64, eos_id=2, bos_id=1)
    return Translator("transformer", codec=None, schedulers=[SimpleNamespace(spec=spec)])


def _kserve_error(texts: list[bytes]) -> ServingError:
    request = InferRequest("transformer", {"text": np.array([[t] for t in texts], dtype=np.object_)})
    with pytest.raises(ServingError) as refused:
        asyncio.run(_translator().infer(request))
    return refused.value


def test_a_kserve_text_that_is_not_utf8_is_named_texts_i_as_every_other_text_error() -> None:
    """KServe's ``text`` input said ``text[1] is not valid UTF-8`` but ``texts[1] is empty or only
    whitespace`` for the same place: one name, ``texts[i]``, as the docs give it."""
    undecodable = _kserve_error([b"fine", b"\xff\xfe"])
    assert isinstance(undecodable, BadRequest) and undecodable.message == "texts[1] is not valid UTF-8"
    blank = _kserve_error([b"fine", b"   "])
    assert isinstance(blank, UnprocessableInput) and blank.message == "texts[1] is empty or only whitespace"


def _infer_error(parameters: dict) -> str:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["x"]}]}
    with pytest.raises(BadRequest) as refused:
        parse_infer(json.dumps({**body, "parameters": parameters}).encode(), None, "transformer", "1")
    return refused.value.message


@pytest.mark.parametrize("value", [1 << 64, -(1 << 63) - 1, HUGE])
def test_generate_refuses_an_integer_parameter_past_64_bits_as_infer_does(value: int) -> None:
    """Generate passed ``beam_size`` 2**64 on to the model, which answered 422 "must be an integer in
    [1, 16]" with every digit; infer refuses it as Triton does, a 400, and now generate does too."""
    with pytest.raises(BadRequest) as refused:
        generate_request({"text": "five", "parameters": {"beam_size": value}}, TRANSLATOR, "1")
    assert refused.value.message == _infer_error({"beam_size": value})
    assert "'beam_size' is past 64 bits" in refused.value.message
    edge = generate_request(
        {"text": "five", "beam_size": (1 << 64) - 1, "n_best": -(1 << 63)}, TRANSLATOR, "1"
    )
    assert edge.parameters == {"beam_size": (1 << 64) - 1, "n_best": -(1 << 63)}  # 64 bits: passed on


def test_an_integer_past_64_bits_is_shown_cut_with_its_number_of_digits() -> None:
    message = _infer_error({"beam_size": HUGE})
    assert message.endswith(f": {'9' * 40}... (300 digits)")


@pytest.mark.parametrize(
    ("parameters", "option"),
    [
        ({"beam_size": 1e300}, "beam_size"),
        ({"beam_size": "9" * 300}, "beam_size"),
        ({"max_length": HUGE}, "max_length"),
        ({"beam_size": "x" * 5000}, "'beam_size'"),
        ({"length_penalty": "gnmt" * 2000}, "length_penalty"),
        ({"length_penalty": HUGE}, "'length_penalty'"),
        ({"alpha": "1x" * 3000}, "'alpha'"),
    ],
)
def test_a_huge_option_value_is_echoed_in_its_error_cut_to_forty_characters(parameters, option) -> None:
    """``beam_size`` 1e300 was refused with all 301 digits of it (a client's 5000-character string
    with all of it); the value is now cut as a version or a header length is, its size said."""
    with pytest.raises(ValueError) as refused:
        check_options(options_from_parameters(parameters))
    message = str(refused.value)
    assert option in message and "characters)" in message and len(message) < 160, message


def test_a_search_config_refuses_a_bool_or_an_overflowing_integer_alpha_by_name() -> None:
    """``BeamConfig(alpha=True)`` searched with alpha 1 (a bool is an int in Python), where every
    protocol refuses it and training's reference decoder does too; an integer past any float raised
    OverflowError from ``math.isfinite`` instead of naming alpha."""
    for alpha in (True, False, PAST_FLOATS, -PAST_FLOATS):
        with pytest.raises(ValueError, match=r"^alpha=.* must be a finite number >= 0$"):
            BeamConfig(alpha=alpha)
    with pytest.raises(ValueError, match=r"^alpha=9{40}\.\.\. \(400 characters\) must"):
        BeamConfig(alpha=PAST_FLOATS)
    assert BeamConfig(alpha=2).alpha == 2 and BeamConfig(alpha=0.5).alpha == 0.5
    with pytest.raises(ValueError, match="alpha must be a number"):
        check_options(DecodingOptions(alpha=True))


@pytest.fixture(scope="module")
def failed_entries(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``double`` (serves), ``nofile`` (config read, its model.onnx missing: fails in the backend) and
    ``unread`` (a config.pbtxt that does not parse)."""
    root = tmp_path_factory.mktemp("protocol-leftovers")
    write_onnx_entry(root, _double("double"), _config("double"))
    write_entry_without_model(root, "nofile", _config("nofile"))
    (root / "unread" / "1").mkdir(parents=True)
    (root / "unread" / "config.pbtxt").write_text("this is { not a config")
    return root


def test_statistics_of_a_model_whose_load_failed_are_refused_as_an_unknown_models(failed_entries) -> None:
    """A model whose config was read but whose load failed answered 200 with zeros (a model that never
    ran, left out of ``/v2/models/stats``); Triton refuses it ("requested model 'nofile' is not
    available"), as the gateway refuses an unknown model's (404). Triton answers a 404 for the metadata
    of an entry whose config it could not read, version or not, as the gateway does."""
    with TestClient(create_app(Settings(model_repository=failed_entries, grpc_port=0))) as client:
        for path in ("/v2/models/nofile/stats", "/v2/models/nofile/versions/1/stats"):
            answer = client.get(path)
            assert answer.status_code == 404, answer.text
            assert "'nofile' is not available: it failed to load" in answer.json()["error"]
        for path in ("/v2/models/unread/stats", "/v2/models/unread/versions/1", "/v2/models/unread"):
            assert client.get(path).status_code == 404, path
        every = client.get("/v2/models/stats").json()["model_stats"]
        assert [stat["name"] for stat in every] == ["double"]
        assert client.get("/v2/models/double/versions/1/stats").json()["model_stats"][0]["name"] == "double"
