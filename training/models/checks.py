"""Checks of the translator configs' fields, so a bad ``--model-arg`` is named when the config is made
instead of failing deep inside the first forward (or, for a layer count below 1, silently building one).
"""

from __future__ import annotations

from collections.abc import Iterable


def _fail(config: object, name: str, what: str) -> None:
    raise ValueError(f"{type(config).__name__}.{name} must be {what}, got {getattr(config, name)!r}")


def require_ints(config: object, names: Iterable[str], minimum: int = 1) -> None:
    """Each named field an int (not a bool) of at least ``minimum``."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            _fail(config, name, "a positive integer" if minimum == 1 else f"an integer >= {minimum}")


def require_probability(config: object, name: str) -> None:
    """The named field a number in [0, 1) (a dropout rate)."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        _fail(config, name, "in [0, 1)")
