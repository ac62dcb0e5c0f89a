"""A request that does not choose ``max_length`` decodes at most 64 tokens, or the model's
``max_positions`` where that is lower: a translator trained with ``--model-arg max_positions=32`` had
every default request refused (``max_length must be an integer in [1, 32], got 64``), on REST, KServe
v2, generate and Triton's ``<name>`` model alike. A ``max_length`` the client chose is still checked
against the model's bound."""

from __future__ import annotations

import asyncio
import json

import pytest

from serving.decoding.options import (
    DEFAULT_MAX_LENGTH,
    LIMITS,
    DecodingOptions,
    check_options,
    config_for,
    options_from_parameters,
)
from serving.errors import UnprocessableInput
from serving.protocol.translate import TranslateRequest, _parameters
from tests.test_triton_translator_model import _Error, _Request, model  # noqa: F401 (fixture)


@pytest.mark.parametrize(("max_positions", "length"), [(None, 64), (12, 12), (64, 64), (200, 64)])
def test_an_unchosen_max_length_is_64_or_the_models_max_positions_where_lower(max_positions, length):
    options = DecodingOptions()
    check_options(options, LIMITS, max_positions)
    assert config_for(options, eos_id=2, bos_id=1, max_positions=max_positions).max_length == length
    assert DEFAULT_MAX_LENGTH == 64


def test_a_chosen_max_length_is_kept_and_still_refused_past_the_models_positions():
    assert config_for(DecodingOptions(max_length=40), eos_id=2, bos_id=1, max_positions=12).max_length == 40
    check_options(DecodingOptions(max_length=12), LIMITS, 12)
    with pytest.raises(ValueError, match=r"max_length must be an integer in \[1, 12\], got 64"):
        check_options(DecodingOptions(max_length=64), LIMITS, 12)


def test_every_protocol_leaves_an_unsent_max_length_unchosen():
    assert options_from_parameters({}).max_length is None
    assert options_from_parameters({"max_length": "20"}).max_length == 20
    with pytest.raises(ValueError, match="'max_length' must be an integer"):
        options_from_parameters({"max_length": None})
    assert TranslateRequest(texts=["a"]).options().max_length is None
    assert TranslateRequest(texts=["a"], max_length=64).options().max_length == 64
    # through a backend's <name> model: only what the client chose is forwarded
    assert "max_length" not in _parameters(TranslateRequest(texts=["a"]).options())
    assert _parameters(TranslateRequest(texts=["a"], max_length=9).options())["max_length"] == 9


def test_tritons_name_model_decodes_an_unsent_max_length_at_a_short_models_positions(model) -> None:  # noqa: F811
    model.spec.max_positions = 12
    lengths = []
    translate = model._translate

    def recording(texts, config):  # noqa: ANN001, ANN202
        lengths.append(config.max_length)
        return translate(texts, config)

    model._translate = recording
    default, chosen, too_long = model.execute(
        [_Request(["one"]), _Request(["two"], max_length=5), _Request(["three"], max_length=64)]
    )
    assert default.error is None and chosen.error is None and lengths == [12, 5]
    assert too_long.error is not None and too_long.error.code == _Error.INVALID_ARG
    assert "max_length must be an integer in [1, 12], got 64" in too_long.error.message


def test_the_gateways_translator_of_a_short_model_answers_a_default_request_as_one_at_its_positions(
    exported_translator_models,
) -> None:
    """The session's transformer, its step spec saying 12 positions (its graphs take more): a request
    that does not choose decodes exactly as one asking for 12, and one asking for 64 is a 422."""
    from serving.decoding.translator import translator_from_entry
    from serving.execution.onnxruntime import onnxruntime_runner

    root, errors = exported_translator_models
    if "transformer" in errors:
        pytest.fail(f"export of transformer failed: {errors['transformer']}")
    repository = root / "model_repository"
    kiln = json.loads((repository / "transformer" / "kiln.json").read_text())
    kiln["translator"]["step_spec"]["max_positions"] = 12
    run = {
        part: onnxruntime_runner(repository / f"transformer_{part}" / "1" / "model.onnx")
        for part in ("encoder", "decoder")
    }
    translator = translator_from_entry(repository / "transformer", kiln, run["encoder"], run["decoder"])
    texts = ["one two three", "forty five", "seven"]
    assert translator.beam_config(TranslateRequest(texts=texts).options()).max_length == 12

    async def served() -> tuple[list, list]:
        await translator.start()
        try:
            default = await translator.translate(texts, TranslateRequest(texts=texts).options())
            twelve = await translator.translate(texts, DecodingOptions(max_length=12))
            with pytest.raises(UnprocessableInput, match=r"max_length must be an integer in \[1, 12\]"):
                await translator.translate(texts, DecodingOptions(max_length=64))
            return default, twelve
        finally:
            await translator.stop()

    default, twelve = asyncio.run(served())
    assert [[(h.text, h.score) for h in hyps] for hyps in default] == [
        [(h.text, h.score) for h in hyps] for hyps in twelve
    ]
