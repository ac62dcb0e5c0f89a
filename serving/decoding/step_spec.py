"""The step spec of a translator (the ``step_spec`` of its kiln.json): decoder inputs by role, parsed and
validated once, and the encoder inputs and settings checks derived from it (docs/translator-interface.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.decoding import beam_search as bs

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
ROLES = ("tokens", "positions", "encoder", "state", "cache", "cache_mask", "row_place")
_REQUIRED = {"state": ("output", "init"), "cache": ("output", "axis", "init_shape")}


@dataclass(frozen=True)
class DecoderInput:
    """One decoder input of the step spec and how its value is produced each step."""

    name: str
    role: str
    output: str | None = None  # state / cache: the decoder output that updates it
    init: str | None = None  # state: the encoder output holding its initial value
    axis: int | None = None  # cache: the axis entries are appended along
    init_shape: tuple[int, ...] | None = None  # cache: initial shape, -1 = rows, 0 on axis
    pad_axis: int | None = None  # encoder: where rows of different source lengths are padded


@dataclass(frozen=True)
class StepSpec:
    """The parsed, validated step spec of a translator (the ``step_spec`` of its kiln.json)."""

    pad_id: int
    bos_id: int
    eos_id: int
    vocab_size: int
    max_positions: int | None
    encoder_inputs: tuple[str, ...]
    encoder_outputs: tuple[str, ...]
    decoder_inputs: tuple[DecoderInput, ...]
    decoder_outputs: tuple[str, ...]
    dtypes: dict[str, str]

    def with_role(self, *roles: str) -> list[DecoderInput]:
        return [inp for inp in self.decoder_inputs if inp.role in roles]

    @property
    def indexed(self) -> bool:
        """Whether the decoder takes a ``row_place`` input: its encoder inputs may then come once per
        sentence (a store with an axis of its own), row ``r`` reading place ``row_place[r]``."""
        return bool(self.with_role("row_place"))


def parse_step_spec(spec: dict[str, Any] | StepSpec) -> StepSpec:
    """Validate a JSON step spec; every problem is reported with the offending input's name."""
    if isinstance(spec, StepSpec):
        return spec
    try:
        inputs = tuple(_parse_input(d) for d in spec["decoder"]["inputs"])
        parsed = StepSpec(
            pad_id=int(spec["pad_id"]),
            bos_id=int(spec["bos_id"]),
            eos_id=int(spec["eos_id"]),
            vocab_size=int(spec["vocab_size"]),
            max_positions=spec.get("max_positions"),
            encoder_inputs=tuple(spec["encoder"]["inputs"]),
            encoder_outputs=tuple(spec["encoder"]["outputs"]),
            decoder_inputs=inputs,
            decoder_outputs=tuple(spec["decoder"]["outputs"]),
            dtypes=dict(spec.get("dtypes", {})),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed step spec: missing or invalid {exc}") from None
    _check_spec(parsed)
    return parsed


def _parse_input(d: dict[str, Any]) -> DecoderInput:
    role = d.get("role")
    if role not in ROLES:
        raise ValueError(
            f"decoder input {d.get('name')!r} has unknown role {role!r}; expected one of {ROLES}"
        )
    missing = [key for key in _REQUIRED.get(role, ()) if key not in d]
    if missing:
        raise ValueError(f"decoder input {d['name']!r} (role {role}) lacks {missing}")
    shape = d.get("init_shape")
    return DecoderInput(
        name=d["name"],
        role=role,
        output=d.get("output"),
        init=d.get("init"),
        axis=d.get("axis"),
        init_shape=tuple(shape) if shape is not None else None,
        pad_axis=d.get("pad_axis"),
    )


def _check_spec(spec: StepSpec) -> None:
    specials = {"pad_id": spec.pad_id, "bos_id": spec.bos_id, "eos_id": spec.eos_id}
    outside = [  # a negative id is no column either: "-1 not below vocab_size" said it was too large
        f"{name} {value} " + ("is negative" if value < 0 else f"not below vocab_size {spec.vocab_size}")
        for name, value in specials.items()
        if not 0 <= value < spec.vocab_size
    ]
    if outside:  # the decoder's log_probs have vocab_size columns: the search reads the eos_id one
        raise ValueError(f"token ids run from 0 to vocab_size - 1: {', '.join(outside)}")
    if len(spec.encoder_inputs) != 1:
        raise ValueError(f"the encoder must take exactly one input (source ids), got {spec.encoder_inputs}")
    if "log_probs" not in spec.decoder_outputs:
        raise ValueError(f"decoder outputs {spec.decoder_outputs} lack 'log_probs'")
    if len(spec.with_role("tokens")) != 1:
        raise ValueError("the decoder needs exactly one input with role 'tokens'")
    for inp in spec.decoder_inputs:
        if inp.role in ("state", "cache") and inp.output not in spec.decoder_outputs:
            raise ValueError(f"{inp.name!r}: output {inp.output!r} is not a decoder output")
        if inp.role == "state" and inp.init not in spec.encoder_outputs:
            raise ValueError(f"{inp.name!r}: init {inp.init!r} is not an encoder output")
        if inp.role == "encoder" and inp.name not in spec.encoder_outputs:
            raise ValueError(f"{inp.name!r}: role 'encoder' but not an encoder output")
        # numpy would take a negative axis from the end, and the compiled step writes the column count
        # at the tensor's field 4 + axis: an axis that is not a dimension after the rows is refused
        if inp.role == "cache" and not _is_axis(inp.axis, len(inp.init_shape or ())):
            raise ValueError(
                f"{inp.name!r}: cache axis {inp.axis!r} is not a dimension 1.. of {list(inp.init_shape or ())}"
            )
        if inp.role == "encoder" and inp.pad_axis is not None and not _is_axis(inp.pad_axis):
            raise ValueError(f"{inp.name!r}: pad_axis {inp.pad_axis!r} is not a dimension after the rows")
    if spec.with_role("cache") and not spec.with_role("cache_mask"):
        raise ValueError("a spec with 'cache' inputs needs a 'cache_mask' input")
    if len(spec.with_role("row_place")) > 1:
        raise ValueError("the decoder takes at most one input with role 'row_place'")


def _is_axis(axis: object, rank: int | None = None) -> bool:
    """Whether ``axis`` is an integer naming a dimension after the rows (below ``rank`` where given)."""
    return type(axis) is int and axis >= 1 and (rank is None or axis < rank)


def takes_indexed_rows(spec: StepSpec, run_decoder: Runner) -> bool:
    """Whether to feed ``run_decoder`` its encoder inputs once per sentence (a store) with ``row_place``:
    the spec has a ``row_place`` input and the runner says its graph's encoder inputs have a batch axis
    of their own (``first_axes``: input name -> name of its first axis, as an ONNX Runtime runner
    reports it). A runner that says nothing (Triton, whose configs give every decoder input one batch
    axis) gets its encoder inputs once per row, and ``row_place`` ``0..R-1``."""
    axes = getattr(run_decoder, "first_axes", None)
    if not spec.indexed or not axes:
        return False
    rows = axes.get(spec.with_role("tokens")[0].name)
    store = [axes.get(inp.name) for inp in spec.with_role("encoder")]
    return isinstance(rows, str) and all(isinstance(a, str) and a != rows for a in store)


_INT64_MAX = np.iinfo(np.int64).max


def encoder_inputs(spec: StepSpec, src_ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
    """Source ids + EOS, right-padded with ``pad_id``: ``{encoder input: int64 [B, S]}``."""
    rows = []
    for i, ids in enumerate(src_ids):
        row = np.asarray(ids)  # checked as one array: a Python check per token cost ~1 us a token
        if row.ndim != 1 or (
            row.size and (row.dtype.kind not in "iu" or row.min() < 0 or row.max() > _INT64_MAX)
        ):
            raise ValueError(f"source sentence {i} must be a list of non-negative token ids, got {ids!r}")
        rows.append(row)
    width = max((r.size + 1 for r in rows), default=1)
    out = np.full((len(rows), width), spec.pad_id, dtype=np.int64)  # [B, S]
    for i, r in enumerate(rows):
        out[i, : r.size] = r
        out[i, r.size] = spec.eos_id
    return {spec.encoder_inputs[0]: out}


def check_config(spec: StepSpec, config: bs.BeamConfig) -> None:
    """Refuse settings the model cannot honour (other eos/bos ids, more positions than it has)."""
    if (config.eos_id, config.bos_id) != (spec.eos_id, spec.bos_id):
        raise ValueError(
            f"BeamConfig eos/bos ({config.eos_id}, {config.bos_id}) differ from the model's "
            f"({spec.eos_id}, {spec.bos_id})"
        )
    if spec.max_positions is not None and config.max_length > spec.max_positions:
        raise ValueError(
            f"max_length={config.max_length} exceeds the model's max_positions={spec.max_positions}"
        )
