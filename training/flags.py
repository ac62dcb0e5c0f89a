"""Range checks of the trainers' numeric flags, so a value outside its range is one error line naming
the flag before any data is read, rather than a traceback or a silently odd run (a negative
``--clip-norm`` turns the gradient around, an infinite ``--lr`` trains to NaN weights)."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any

from training.dist_timeout import check_dist_timeout


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


def check_run_ranges(config: Any, at_least_one: tuple[str, ...], zero_or_more: tuple[str, ...]) -> None:
    """The numeric flags both trainers share, refused outside their range before any data is read:
    ``--seed``, ``--dist-timeout``, the counts (``at_least_one``), ``--lr`` (> 0), the sizes and
    weights (``zero_or_more``) and ``--label-smoothing`` (in [0, 1))."""
    check_seed(config.seed)
    check_dist_timeout(config.dist_timeout)
    check_minimum(1, {name: getattr(config, name) for name in at_least_one})
    check_positive({"lr": config.lr})
    check_minimum(0, {name: getattr(config, name) for name in zero_or_more})
    if not 0 <= config.label_smoothing < 1:
        raise ValueError(f"--label-smoothing must be in [0, 1), got {config.label_smoothing}")


def check_model_args(model: str, config_cls: type, model_args: Mapping[str, Any]) -> None:
    """Refuse a ``--model-arg`` that is no field of ``model``'s config (naming those accepted), or a
    boolean one spelled otherwise than True or False (``check_bool_model_args``)."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(model_args) - fields)
    if unknown:
        raise ValueError(
            f"--model-arg {', '.join(unknown)}: not a field of {model}; accepted: {sorted(fields)}"
        )
    check_bool_model_args(config_cls, model_args)
