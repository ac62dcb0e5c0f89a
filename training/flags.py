"""Range checks of the trainers' numeric flags, so a value outside its range is one error line naming
the flag before any data is read, rather than a traceback or a silently odd run (a negative
``--clip-norm`` turns the gradient around, an infinite ``--lr`` trains to NaN weights)."""

from __future__ import annotations

import math
from collections.abc import Mapping


def flag(name: str) -> str:
    """The command-line flag of a config field: ``clip_norm`` -> ``--clip-norm``."""
    return f"--{name.replace('_', '-')}"


def check_minimum(minimum: float, values: Mapping[str, float | None]) -> None:
    """Refuse each set value (``None`` = unset) that is not a finite number >= ``minimum``."""
    for name, value in values.items():
        if value is None:
            continue
        if not math.isfinite(value):
            raise ValueError(f"{flag(name)} must be a finite number, got {value}")
        if value < minimum:
            raise ValueError(f"{flag(name)} must be >= {minimum}, got {value}")


def check_positive(values: Mapping[str, float | None]) -> None:
    """Refuse each set value that is not a finite number > 0 (a learning rate)."""
    check_minimum(-math.inf, values)
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ValueError(f"{flag(name)} must be > 0, got {value}")
