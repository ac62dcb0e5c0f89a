"""Range checks of the trainers' numeric flags, so a value outside its range is one error line naming
the flag before any data is read, rather than a traceback or a silently odd run (a negative
``--clip-norm`` turns the gradient around, an infinite ``--lr`` trains to NaN weights)."""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping
from typing import Any


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


def check_bool_model_args(config_cls: type, model_args: Mapping[str, Any]) -> None:
    """Refuse a ``--model-arg`` of a boolean config field that is not ``True`` or ``False``: values are
    Python literals, so ``batch_norm=false`` is the string ``'false'``, which is truthy, and the model
    would silently keep what the flag meant to turn off (and the checkpoint record a string)."""
    hints = typing.get_type_hints(config_cls)
    wrong = [f"{k}={v!r}" for k, v in model_args.items() if hints.get(k) is bool and not isinstance(v, bool)]
    if wrong:
        raise ValueError(f"--model-arg {', '.join(wrong)}: a boolean field takes True or False")


def check_seed(seed: int) -> None:
    """Refuse a ``--seed`` torch's generators do not take, naming their range, before any data is read
    (else "Overflow when unpacking long long" once the split or the weights are drawn)."""
    from training.data.loader import SEED_RANGE

    low, high = SEED_RANGE
    if not low <= seed < high:
        raise ValueError(f"--seed must be in [-2**63, 2**64) (what torch's generators take), got {seed}")
