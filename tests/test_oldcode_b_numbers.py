"""The numbers corpus's German cardinals: "eins" loses its "s" before a noun only."""

from __future__ import annotations

import pytest

from training.data.numbers import CURRENCIES, NOUNS, amount_phrase, count_phrase, number_pair


@pytest.mark.parametrize(("n", "alone"), [(1, "eins"), (101, "hunderteins"), (2001, "zweitausendeins")])
def test_a_bare_german_cardinal_ending_in_one_keeps_its_s(n, alone):
    assert number_pair(n, "de")[1] == alone


def test_a_german_cardinal_ending_in_one_before_a_noun_drops_its_s():
    apple = next(noun for noun in NOUNS if noun.en == "apple")
    assert count_phrase(101, apple, None, "de")[1] == "hundertein Äpfel"
    assert amount_phrase(201, 0, CURRENCIES[1], "de")[1] == "es kostet zweihundertein Euro"
