"""A vocabulary that outgrew ``--vocab-size`` is named in a warning, not left for the checkpoint to show.

BPE keeps every character of the training text whole: an unspaced script with more distinct
characters than the size asked gave a larger, purely character-level vocabulary (not one merge),
silently. A smaller vocabulary than asked (no pair left twice) is BPE's bound at work and says nothing.
"""

from __future__ import annotations

import logging

from training.data.numbers import generate_pairs
from training.data.tokenizer import train_tokenizer

# 300 distinct CJK characters in unspaced sentences
UNSPACED = ["".join(chr(0x4E00 + (i * 7 + j * 13) % 300) for j in range(12)) for i in range(200)]


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_more_distinct_characters_than_the_vocabulary_asked_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="training.data.tokenizer"):
        tokenizer = train_tokenizer(UNSPACED, 100)
    assert tokenizer.get_vocab_size() > 100
    (warning,) = _warnings(caplog)
    assert (
        f"BPE vocabulary of {tokenizer.get_vocab_size()} tokens, not the 100 asked (--vocab-size)" in warning
    )
    assert "300 distinct characters" in warning


def test_a_vocabulary_under_the_size_asked_is_not_warned_about(caplog):
    texts = [text for pair in generate_pairs(300, seed=1) for text in pair]
    with caplog.at_level(logging.WARNING, logger="training.data.tokenizer"):
        tokenizer = train_tokenizer(texts, 5000)
    assert tokenizer.get_vocab_size() < 5000
    assert _warnings(caplog) == []
