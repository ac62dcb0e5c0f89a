"""A translator keeps the BeamConfig of an accepted option set: the same answer as building it anew,
never a refused set let through by a cached equal one, and never more than CONFIGS_KEPT kept."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from serving.decoding import translator as tr
from serving.decoding.options import DecodingOptions, config_for
from serving.errors import UnprocessableInput


def _translator(max_positions: int | None = 32) -> tr.Translator:
    spec = SimpleNamespace(eos_id=2, bos_id=1, max_positions=max_positions)
    return tr.Translator("t", codec=None, schedulers=[SimpleNamespace(spec=spec)])


def test_a_kept_config_is_the_one_built_for_the_options() -> None:
    translator = _translator()
    for options in (
        DecodingOptions(),
        DecodingOptions(beam_size=2, alpha=0.5),
        DecodingOptions(max_length=7),
    ):
        built = config_for(options, eos_id=2, bos_id=1, max_positions=32)
        assert translator.beam_config(options) == built
        assert translator.beam_config(options) is translator.beam_config(options)


@pytest.mark.parametrize(
    ("accepted", "refused", "named"),
    [
        (DecodingOptions(beam_size=1, n_best=1), DecodingOptions(beam_size=True, n_best=1), "beam_size"),
        (DecodingOptions(max_length=1), DecodingOptions(max_length=True), "max_length"),
        (DecodingOptions(alpha=1), DecodingOptions(alpha=True), "alpha"),
    ],
)
def test_a_refused_value_equal_to_an_accepted_one_is_still_refused(
    accepted: DecodingOptions, refused: DecodingOptions, named: str
) -> None:
    """``True == 1`` in Python, so options equal to an accepted set may still be refused."""
    translator = _translator()
    translator.beam_config(accepted)
    with pytest.raises(UnprocessableInput, match=named):
        translator.beam_config(refused)


def test_the_kept_configs_are_bounded_and_unhashable_values_are_checked_not_kept() -> None:
    translator = _translator(max_positions=None)
    for length in range(1, tr.CONFIGS_KEPT * 3):
        assert translator.beam_config(DecodingOptions(max_length=length)).max_length == length
        assert len(translator._configs) <= tr.CONFIGS_KEPT
    with pytest.raises(UnprocessableInput, match="alpha"):
        translator.beam_config(DecodingOptions(alpha=[1.0]))  # type: ignore[arg-type]
    assert all(isinstance(v, tuple) for v in translator._configs)
