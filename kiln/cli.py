"""What Kiln's command lines share."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, except where it would mislead: no default (the help says
    what happens then) and on/off flags (``--no-augment``'s default, True, is its option's, not its own)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)
