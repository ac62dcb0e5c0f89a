"""A translator trained on a corpus whose sources hold no capital letter, without ``--lowercase``,
reads served capitals as unknown tokens ("Forty two" -> <unk> two): training now says so and names
the flag; the demo's corpus is lower-case, and a user typing a capital got a translation of unknowns."""

from __future__ import annotations

import logging

from training.translate_setup import warn_uncased_source


def test_a_lower_case_corpus_without_lowercase_is_warned(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="training.translate"):
        assert warn_uncased_source([("forty two", "zweiundvierzig"), ("seven", "sieben")], lowercase=False)
    assert "--lowercase" in caplog.text and "no capital letters" in caplog.text


def test_cased_corpora_lowercase_runs_and_uncased_scripts_are_not_warned(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="training.translate"):
        assert not warn_uncased_source([("forty two", "x"), ("Seven", "y")], lowercase=False)
        assert not warn_uncased_source([("forty two", "x")], lowercase=True)
        assert not warn_uncased_source([("四十二", "x"), ("42 !", "y")], lowercase=False)  # no cased letter
    assert caplog.text == ""
