"""What Kiln's command lines share (kiln/cli.py): the help text and the number types."""

from __future__ import annotations

import argparse
import re

import pytest

from kiln.cli import HelpFormatter, number


def test_defaults_are_shown_only_where_they_say_something():
    parser = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="passes over the data")
    parser.add_argument("--resume", help="continue from this checkpoint")  # no default: nothing to show
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="train without it")
    text = " ".join(parser.format_help().split())
    assert "passes over the data (default: 3)" in text
    assert "continue from this checkpoint" in text and "(default: None)" not in text
    assert "train without it" in text and "(default: True)" not in text


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (number(int, 1), "0", "0 is not at least 1"),
        (number(int, 0), "-1", "-1 is not at least 0"),
        (number(int, 0, 65535), "70000", "70000 is above 65535"),
        (number(float, 0, above=True), "0", "0.0 is not above 0"),
        (number(int, 1), "1.5", "'1.5' is not a whole number"),
        (number(float, 0, above=True), "soon", "'soon' is not a number"),
    ],
)
def test_a_number_out_of_its_range_is_a_usage_error_saying_why(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        parse(text)


def test_a_number_in_its_range_is_read_as_its_kind():
    assert number(int, 0, 65535)("65535") == 65535
    assert number(float, 0, above=True)("0.5") == 0.5
