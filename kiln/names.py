"""What a checkpoint's file name must be for a model to be served under it. Export names a model (its
repository entries) by the checkpoint's file stem; training refuses, before a run, a ``--name`` that
export could not name a model by, so hours of training do not end in a checkpoint export refuses."""

from __future__ import annotations

import re


def model_name(stem: str) -> str | None:
    """The Triton-safe model name for a checkpoint whose file stem is ``stem`` (characters other than
    letters, digits, ``_`` and ``-`` written as ``_``), or None where there is none: an empty stem, or
    one that starts with ``.``, ``_`` or ``-`` (a hidden file, a name Triton and command lines misread)."""
    name = re.sub(r"[^A-Za-z0-9_\-]", "_", stem)
    if not name or name[0] in "._-":
        return None
    return name
