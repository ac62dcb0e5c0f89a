"""The help text Kiln's command lines share (kiln/cli.py)."""

from __future__ import annotations

import argparse

from kiln.cli import HelpFormatter


def test_defaults_are_shown_only_where_they_say_something():
    parser = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="passes over the data")
    parser.add_argument("--resume", help="continue from this checkpoint")  # no default: nothing to show
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="train without it")
    text = " ".join(parser.format_help().split())
    assert "passes over the data (default: 3)" in text
    assert "continue from this checkpoint" in text and "(default: None)" not in text
    assert "train without it" in text and "(default: True)" not in text
