"""What Kiln's command lines share."""

from __future__ import annotations

import argparse
import copy


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
