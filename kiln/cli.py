"""What Kiln's command lines share."""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable


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
