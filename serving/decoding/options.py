"""Decoding options, their limits and defaults, and the per-sentence search settings derived from them.

One definition each (docs/translator-interface.md, "Decoding defaults and limits"): the REST schema,
the KServe v2 parameters and Triton's ``<name>`` model read :data:`DEFAULTS` and :data:`LIMITS` from
here; :class:`BeamConfig` is what :mod:`serving.decoding.beam_search` searches with, :class:`Hypothesis`
what it returns, :class:`Finished` a sentence's outcome in a decode batch, and :func:`normalize_score`
the length penalty it ranks finished hypotheses by.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

LENGTH_PENALTIES = ("none", "average", "gnmt")


@dataclass(frozen=True)
class DecodingOptions:
    """What a client may choose per request, with the defaults every protocol uses."""

    beam_size: int = 4
    n_best: int = 1
    max_length: int | None = None  # not chosen: DEFAULT_MAX_LENGTH, or the model's max_positions if lower
    length_penalty: str = "average"
    alpha: float = 1.0


@dataclass(frozen=True)
class DecodingLimits:
    """Bounds of a request (REST, KServe v2 and Triton's ``<name>`` model derive theirs from here).

    ``max_alpha`` keeps every length-penalty divisor finite up to ``max_length`` (256**10 ~ 1e24), so no
    option a client may send can overflow in the search.
    """

    max_beam_size: int = 16
    max_length: int = 256  # further capped by the model's max_positions
    max_alpha: float = 10.0
    max_texts: int = 64
    max_chars: int = 1000


DEFAULTS = DecodingOptions()
# A model trained with fewer positions (``--model-arg max_positions=32``) decodes at most that many
# tokens when a request does not choose: a fixed 64 refused every default request to it (422).
DEFAULT_MAX_LENGTH = 64


def default_max_length(max_positions: int | None) -> int:
    """The ``max_length`` of a request that does not choose one, for a model of ``max_positions``."""
    return min(DEFAULT_MAX_LENGTH, max_positions) if max_positions else DEFAULT_MAX_LENGTH


def max_length_of(options: DecodingOptions, max_positions: int | None) -> int:
    """The request's ``max_length``, its default resolved for the model."""
    return default_max_length(max_positions) if options.max_length is None else options.max_length


LIMITS = DecodingLimits()
_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(DecodingOptions))
SHOWN_CHARS = 40  # of a refused value, in its error: a client may send 1e300 or a megabyte of text


def shown(value: object) -> str:
    """``repr(value)`` for an error message, cut at ``SHOWN_CHARS`` (its length said where it was cut)."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"


def check_options(
    options: DecodingOptions, limits: DecodingLimits = LIMITS, max_positions: int | None = None
):
    """Refuse options outside the limits with a ValueError naming the option (a client's 422)."""
    longest = min(limits.max_length, max_positions) if max_positions else limits.max_length
    for name, low, high in (
        ("beam_size", 1, limits.max_beam_size),
        ("max_length", 1, longest),
        ("n_best", 1, options.beam_size),
    ):
        value = getattr(options, name)
        if name == "max_length" and value is None:  # not chosen: the default fits the model
            continue
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= value <= high:
            raise ValueError(f"{name} must be an integer in [{low}, {high}], got {shown(value)}")
    if options.length_penalty not in LENGTH_PENALTIES:
        raise ValueError(
            f"length_penalty must be one of {LENGTH_PENALTIES}, got {shown(options.length_penalty)}"
        )
    alpha = options.alpha
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= limits.max_alpha:
        raise ValueError(f"alpha must be a number in [0, {limits.max_alpha:g}], got {shown(alpha)}")


def options_from_parameters(params: dict) -> DecodingOptions:
    """Decoding options from request parameters (KServe v2 ``parameters``, Triton's request parameters),
    typed by their defaults; other names are ignored. An integer option takes an integer, a float with
    no fractional part or a string of digits (gRPC clients send ``string_param``); a float option any
    number or numeric string in ASCII without ``_`` (as a number is written on the wire). Anything
    else is a ValueError naming the parameter (a client's 400). The bounds are :func:`check_options`'s."""
    values: dict = {}
    for name in _OPTION_NAMES:
        if name not in params:
            continue
        value, default = params[name], getattr(DEFAULTS, name)
        default = DEFAULT_MAX_LENGTH if name == "max_length" else default  # typed as the int it resolves to
        if isinstance(default, bool) or isinstance(value, bool):
            raise ValueError(f"parameter {name!r} must be {type(default).__name__}, got {shown(value)}")
        if isinstance(default, int):
            if (
                isinstance(value, float)
                and value.is_integer()
                or isinstance(value, str)
                and value.strip().lstrip("-").isascii()
                and value.strip().lstrip("-").isdigit()
            ):
                try:
                    value = int(value)
                except ValueError:  # "--5", or more digits than int() converts
                    raise ValueError(f"parameter {name!r} must be an integer, got {shown(value)}") from None
            elif not isinstance(value, int):
                raise ValueError(f"parameter {name!r} must be an integer, got {shown(value)}")
        elif isinstance(default, float):
            if isinstance(value, str) and not (value.isascii() and "_" not in value):
                # float() also reads "1_0" as 10 and "٤" or "４" as 4, where int options refuse them
                raise ValueError(f"parameter {name!r} must be a number, got {shown(value)}")
            try:
                value = float(value)
            except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond any float
                raise ValueError(f"parameter {name!r} must be a number, got {shown(value)}") from None
        elif not isinstance(value, str):
            raise ValueError(f"parameter {name!r} must be a string, got {shown(value)}")
        values[name] = value
    return DecodingOptions(**values)


def config_for(
    options: DecodingOptions, *, eos_id: int, bos_id: int, max_positions: int | None = None
) -> BeamConfig:
    """The search settings of checked options for a model's special ids (and ``max_positions``, which
    caps the default ``max_length``)."""
    return BeamConfig(
        beam_size=int(options.beam_size),
        n_best=int(options.n_best),
        max_length=int(max_length_of(options, max_positions)),
        length_penalty=options.length_penalty,
        alpha=float(options.alpha),
        eos_id=eos_id,
        bos_id=bos_id,
    )


@dataclass(frozen=True)
class BeamConfig:
    """Decoding settings of one sentence; invalid combinations are refused with the field named."""

    beam_size: int = DEFAULTS.beam_size
    n_best: int = DEFAULTS.n_best
    max_length: int = DEFAULT_MAX_LENGTH
    min_length: int = 0
    length_penalty: str = DEFAULTS.length_penalty
    alpha: float = DEFAULTS.alpha
    eos_id: int = 2
    bos_id: int = 1

    def __post_init__(self) -> None:
        for name, minimum in (("beam_size", 1), ("n_best", 1), ("max_length", 1), ("min_length", 0)):
            _check_int(name, getattr(self, name), minimum)
        _check_int("eos_id", self.eos_id, 0)
        _check_int("bos_id", self.bos_id, 0)
        if self.n_best > self.beam_size:
            raise ValueError(f"n_best={self.n_best} must be <= beam_size={self.beam_size}")
        if self.min_length >= self.max_length:
            raise ValueError(f"min_length={self.min_length} must be < max_length={self.max_length}")
        if self.length_penalty not in LENGTH_PENALTIES:
            raise ValueError(
                f"length_penalty={shown(self.length_penalty)}; expected one of {LENGTH_PENALTIES}"
            )
        _check_alpha(self.alpha)
        if not math.isfinite(_divisor(self.max_length, self.length_penalty, float(self.alpha))):
            raise ValueError(
                f"alpha={shown(self.alpha)} overflows the length penalty at max_length={self.max_length}"
            )
        if self.eos_id == self.bos_id:
            raise ValueError(f"eos_id and bos_id must differ (both {self.eos_id})")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name}={shown(value)} must be an integer >= {minimum}")


def _check_alpha(alpha: object) -> None:
    """A finite number from 0, refused by name as the protocols' parsers refuse it: a bool is an int in
    Python, and an int past any float made ``math.isfinite`` raise OverflowError instead."""
    try:
        finite = not isinstance(alpha, bool) and isinstance(alpha, int | float) and math.isfinite(alpha)
    except OverflowError:
        finite = False
    if not finite or alpha < 0:
        raise ValueError(f"alpha={shown(alpha)} must be a finite number >= 0")


@dataclass(frozen=True)
class Hypothesis:
    """One finished translation: generated ids (EOS included, no BOS), raw and normalized score."""

    tokens: list[int]
    score: float
    normalized_score: float


@dataclass(frozen=True)
class Finished:
    """A sentence that left a decode batch: the caller's key and its hypotheses, or why it failed."""

    key: Any
    hypotheses: list[Hypothesis]
    error: str | None = None


def output_tokens(tokens: list[int], *, eos_id: int, pad_id: int, bos_id: int) -> list[int]:
    """The ids to detokenize from a hypothesis: up to its first EOS, without BOS and padding."""
    if eos_id in tokens:
        tokens = tokens[: tokens.index(eos_id)]
    return [t for t in tokens if t not in (pad_id, bos_id)]


def _divisor(length: int, penalty: str, alpha: float) -> float:
    """The length penalty's divisor for ``length`` generated tokens (inf where it overflows), by float
    power whatever ``alpha``'s type: an int's exact power (41**10) rounds otherwise, 1 ulp off."""
    try:
        if penalty == "average":
            return length ** float(alpha)
        if penalty == "gnmt":
            return ((5 + length) / 6) ** float(alpha)
    except OverflowError:
        return math.inf
    return 1.0


def normalize_score(score: float, length: int, penalty: str, alpha: float) -> float:
    """Length-normalized score; ``length`` counts the generated tokens including EOS."""
    return score / _divisor(length, penalty, alpha)


@functools.lru_cache(maxsize=256)
def _divisors(penalty: str, alpha: float, width: int) -> np.ndarray:
    """Divisors for lengths ``0..width`` computed by Python's float power, as the reference does (a
    read-only table, shared by the sentences with these options: ~15 us a joiner to build)."""
    table = np.array([_divisor(n, penalty, alpha) for n in range(width + 1)], dtype=np.float64)
    table.flags.writeable = False
    return table  # [width + 1]
