"""What Kiln's command lines share."""

from __future__ import annotations

import argparse
import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.logging import RichHandler


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help (or alone, for an option without help), except where it
    would mislead or say nothing: no default (the help says what happens then), an empty list (a
    repeatable option given no times) and on/off flags (``--no-progress``'s default, True, is its
    option's, not its own)."""

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and _shows_default(action):  # argparse prints nothing for these
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if not _shows_default(action):
            return action.help
        return super()._get_help_string(action)


def _shows_default(action: argparse.Action) -> bool:
    return action.default not in (None, [], argparse.SUPPRESS) and action.nargs != 0


def number(
    kind: type, low: float, high: float | None = None, *, above: bool = False
) -> Callable[[str], int | float]:
    """An argparse type: a number of ``kind`` (``int``: a whole one) from ``low`` (``above``: over it,
    excluded) up to ``high``, refused in a usage error that says why (threads, ports, timeouts)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if above and not value > low:
            raise argparse.ArgumentTypeError(f"{value} is not above {low}")
        if not above and not value >= low:
            raise argparse.ArgumentTypeError(f"{value} is not at least {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{value} is above {high}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def path_text(text: str) -> str:
    """An argparse type: a path, refused in a usage error when blank. ``Path("")`` is the working directory,
    so an unset shell variable (``--repository "$REPO"``, ``make demo REPOSITORY=``) trained, exported and
    served in whatever directory the command ran in, and a blank checkpoint path exported every ``*.pt``
    found there."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path (an unset shell variable?); name a directory or file")
    return text


def directory(text: str) -> Path:
    """:func:`path_text` as a :class:`~pathlib.Path`."""
    return Path(path_text(text))


def interactive(console: Console) -> bool:
    """Whether ``console`` can redraw a bar or spinner in place: a terminal, and not TERM=dumb (where rich
    draws nothing until the bar stops, then its last frame, read as a step left hanging)."""
    return console.is_terminal and not console.is_dumb_terminal


def log_handler(
    console: Console,
    plain: str,
    *,
    rich: str = "%(message)s",
    show_time: bool = True,
    plain_stream: TextIO | None = None,
) -> logging.Handler:
    """Log records for a command that draws progress on ``console``: on an interactive terminal through
    the console itself (rich's level column, the record formatted by ``rich``), so that they land above
    its bar or spinner (written to stderr directly, they ran on from its half-drawn line); elsewhere (a
    CI log, ``| tee``) one plain line a record, formatted by ``plain``, since rich wraps its columns at
    80 characters there, on ``plain_stream`` (default: the console's own)."""
    handler: logging.Handler
    if interactive(console):
        handler = RichHandler(console=console, show_time=show_time, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter(rich))
    else:
        handler = logging.StreamHandler(plain_stream or console.file)
        handler.setFormatter(logging.Formatter(plain, "%H:%M:%S"))
    return handler


def listed(items: list[str], shown: int) -> str:
    """The first ``shown`` of ``items`` joined with commas, and how many more there are (an error line
    that names what it refuses without printing hundreds of names)."""
    more = len(items) - shown
    return ", ".join(items[:shown]) + (f" and {more} more" if more > 0 else "")
