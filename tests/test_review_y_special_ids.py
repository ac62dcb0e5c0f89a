"""A step spec's special ids are refused in words that fit the id: a negative one is said to be negative,
not "not below vocab_size" (which reads as too large, for an id far below it)."""

from __future__ import annotations

import pytest

from serving.decoding import step_spec as sp
from tests.test_stepper import SPEC


def _refusal(**ids: int) -> str:
    with pytest.raises(ValueError) as refused:
        sp.parse_step_spec({**SPEC, **ids})
    return str(refused.value)


def test_a_negative_special_id_is_named_negative_not_too_large():
    message = _refusal(bos_id=-1)
    assert "bos_id -1 is negative" in message
    assert "not below" not in message


def test_each_special_id_outside_the_vocabulary_is_named_with_its_own_reason():
    vocab = SPEC["vocab_size"]
    message = _refusal(pad_id=-2, eos_id=vocab)
    assert "pad_id -2 is negative" in message
    assert f"eos_id {vocab} not below vocab_size {vocab}" in message
