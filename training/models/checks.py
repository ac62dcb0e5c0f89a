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


def require_special_ids(config: object, vocab_sizes: Iterable[str]) -> None:
    """``pad_id``, ``bos_id`` and ``eos_id`` distinct ints inside every named vocabulary: an id past a
    vocabulary failed in ``nn.Embedding`` (an assertion) or at the first decode step (an IndexError), and
    an ``eos_id`` equal to ``pad_id`` built a model whose encoder masked every source's EOS as padding."""
    names = ("pad_id", "bos_id", "eos_id")
    require_ints(config, names, minimum=0)
    smallest = min(getattr(config, size) for size in vocab_sizes)
    for name in names:
        if getattr(config, name) >= smallest:
            _fail(config, name, f"an id inside the vocabularies (< {smallest})")
    ids = [getattr(config, name) for name in names]
    if len(set(ids)) < len(ids):
        raise ValueError(f"{type(config).__name__}: pad_id, bos_id and eos_id must differ, got {ids}")
