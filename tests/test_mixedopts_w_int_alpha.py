"""An integer ``alpha`` normalizes as its float does, in the PyTorch reference and in the serving engine.

The engine's divisors are Python float powers (``serving.decoding.options._divisors``, alpha cast to
float); the reference took ``length ** alpha`` as given, so an int alpha was an exact integer power,
which rounds otherwise for some lengths (41**10, 101**8, 199**7): normalized scores 1 ulp apart from the
engine's for the same search (``training.decoding.beam_search(..., alpha=10)``)."""

from __future__ import annotations

import pytest

from serving.decoding import beam_search as bs
from serving.decoding import options
from tests.test_decoding_fuzz import engine_together, reference_alone
from training import decoding

# (length, alpha) whose exact integer power and float power give different normalized scores
APART = [(41, 10), (82, 10), (101, 8), (199, 7)]


@pytest.mark.parametrize(("length", "alpha"), APART)
def test_an_integer_alpha_normalizes_as_its_float_in_the_reference_and_the_engine(length, alpha) -> None:
    assert -1.0 / length**alpha != -1.0 / float(length) ** float(alpha)  # the case this guards
    want = -1.0 / options._divisors("average", float(alpha), length)[length]  # the engine's divisor
    assert decoding.normalize_score(-1.0, length, "average", alpha) == want
    assert bs.normalize_score(-1.0, length, "average", alpha) == want
    assert decoding.normalize_score(-1.0, length, "average", float(alpha)) == want


@pytest.mark.parametrize("seed", [0, 1])
def test_a_search_with_an_integer_alpha_gets_the_references_scores_bit_for_bit(seed) -> None:
    """Every hypothesis 41 tokens long (EOS blocked until step 40, forced there) at alpha 10 (an int):
    the engine's hypotheses, raw and normalized scores equal the reference's alone."""
    config = bs.BeamConfig(beam_size=2, n_best=2, max_length=41, min_length=40, alpha=10)
    (got,) = engine_together([(seed, config, 0)], 8, bs.step)
    want = reference_alone(seed, 8, config)
    assert [len(tokens) for tokens, _, _ in want] == [41, 41]
    assert got == want
