"""Decoder-state management for translators, driven by the model's JSON step spec (numpy only).

The encoder and decoder graphs are opaque callables ``run(inputs: dict[str, ndarray]) -> dict[str,
ndarray]`` (ONNX Runtime, Triton BLS, a torch module wrapped in a test). This module keeps each row's
decoder state by role (docs/translator-interface.md): ``encoder`` constants, ``state`` replaced by its
output, ``cache`` appended along its axis with ``cache_mask`` marking valid entries, ``positions``.

Two ways to drive it:
- :func:`translate_ids`: all sentences of one call batched together in every decoder step (export's
  ONNX parity check, the Triton python model).
- :class:`Sentence` + :func:`step_sentences`: the iteration-level scheduler's building blocks; rows of
  sentences from different requests, with different source and cache lengths, are merged into one
  decoder call (:func:`merge_rows`) and split back (:func:`split_rows`); sentences join and leave
  between steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.decoding import beam_search as bs

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
ROLES = ("tokens", "positions", "encoder", "state", "cache", "cache_mask")
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
    if spec.with_role("cache") and not spec.with_role("cache_mask"):
        raise ValueError("a spec with 'cache' inputs needs a 'cache_mask' input")


# --- per-row state ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowState:
    """Decoder state of some rows (axis 0 of every tensor): inputs by name, plus each row's position."""

    tensors: dict[str, np.ndarray]  # encoder / state / cache / cache_mask inputs
    positions: np.ndarray  # int64 [rows]: target position of the token fed next

    @property
    def rows(self) -> int:
        return int(self.positions.shape[0])


def encoder_inputs(spec: StepSpec, src_ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
    """Source ids + EOS, right-padded with ``pad_id``: ``{encoder input: int64 [B, S]}``."""
    rows = []
    for i, ids in enumerate(src_ids):
        ids = list(ids)
        if not all(isinstance(t, int | np.integer) and t >= 0 for t in ids):
            raise ValueError(f"source sentence {i} must be a list of non-negative token ids, got {ids!r}")
        rows.append(ids + [spec.eos_id])
    width = max((len(r) for r in rows), default=1)
    out = np.full((len(rows), width), spec.pad_id, dtype=np.int64)  # [B, S]
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return {spec.encoder_inputs[0]: out}


def initial_rows(spec: StepSpec, encoded: dict[str, np.ndarray], n: int) -> RowState:
    """One row per sentence from the encoder outputs: constants, state inits, empty caches."""
    missing = [name for name in spec.encoder_outputs if name not in encoded]
    if missing:
        raise ValueError(f"the encoder did not return {missing}")
    tensors: dict[str, np.ndarray] = {}
    for inp in spec.decoder_inputs:
        if inp.role == "encoder":
            tensors[inp.name] = np.asarray(encoded[inp.name])
        elif inp.role == "state":
            tensors[inp.name] = np.asarray(encoded[inp.init])
        elif inp.role == "cache":
            shape = [n if d == -1 else d for d in inp.init_shape]
            tensors[inp.name] = np.zeros(shape, dtype=spec.dtypes.get(inp.name, "float32"))
        elif inp.role == "cache_mask":
            tensors[inp.name] = np.zeros((n, 0), dtype=bool)
    return RowState(tensors=tensors, positions=np.zeros(n, dtype=np.int64))


def gather_rows(state: RowState, origin: np.ndarray) -> RowState:
    """Reorder / duplicate / drop rows by beam origin (``np.take`` on axis 0 of every tensor)."""
    origin = np.asarray(origin, dtype=np.int64)
    tensors = {name: np.take(value, origin, axis=0) for name, value in state.tensors.items()}
    return RowState(tensors=tensors, positions=state.positions[origin])


def decoder_feed(spec: StepSpec, state: RowState, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """The named inputs of one decoder call for these rows."""
    feed = dict(state.tensors)
    for inp in spec.with_role("tokens"):
        feed[inp.name] = np.asarray(tokens, dtype=np.int64)  # [rows]
    for inp in spec.with_role("positions"):
        feed[inp.name] = state.positions  # [rows]
    return feed


def apply_outputs(spec: StepSpec, state: RowState, outputs: dict[str, np.ndarray]) -> RowState:
    """State after a step: ``state`` replaced, ``cache`` appended, the new entry marked valid."""
    tensors = dict(state.tensors)
    for inp in spec.decoder_inputs:
        if inp.role == "state":
            tensors[inp.name] = outputs[inp.output]
        elif inp.role == "cache":
            tensors[inp.name] = np.concatenate([state.tensors[inp.name], outputs[inp.output]], axis=inp.axis)
        elif inp.role == "cache_mask":
            valid = np.ones((state.rows, 1), dtype=bool)
            tensors[inp.name] = np.concatenate([state.tensors[inp.name], valid], axis=1)  # [rows, past+1]
    return RowState(tensors=tensors, positions=state.positions + 1)


def run_step(spec: StepSpec, run_decoder: Runner, state: RowState, tokens: np.ndarray):
    """One decoder call: ``(log_probs float32 [rows, V], state after the step)``."""
    if len(tokens) != state.rows:
        raise ValueError(f"{len(tokens)} tokens for {state.rows} decoder rows")
    outputs = run_decoder(decoder_feed(spec, state, tokens))
    missing = [name for name in spec.decoder_outputs if name not in outputs]
    if missing:
        raise ValueError(f"the decoder did not return {missing}")
    log_probs = np.asarray(outputs["log_probs"], dtype=np.float32)  # [rows, V]
    return log_probs, apply_outputs(spec, state, outputs)


# --- merging rows of different sentences -------------------------------------------------------------


def merge_rows(spec: StepSpec, states: Sequence[RowState]) -> RowState:
    """Stack rows of several sentences into one call: caches LEFT-padded (mask False), encoder
    tensors right-padded on ``pad_axis`` (zeros / False), so every row computes what it would alone."""
    if not states:
        raise ValueError("merge_rows needs at least one RowState")
    tensors: dict[str, np.ndarray] = {}
    past = max((s.tensors[m.name].shape[1] for s in states for m in spec.with_role("cache_mask")), default=0)
    for inp in spec.with_role("encoder", "state", "cache", "cache_mask"):
        parts = [s.tensors[inp.name] for s in states]
        if inp.role == "cache":
            parts = [_pad_to(p, inp.axis, past, left=True) for p in parts]
        elif inp.role == "cache_mask":
            parts = [_pad_to(p, 1, past, left=True) for p in parts]
        elif inp.role == "encoder" and inp.pad_axis is not None:
            longest = max(p.shape[inp.pad_axis] for p in parts)
            parts = [_pad_to(p, inp.pad_axis, longest, left=False) for p in parts]
        tensors[inp.name] = _concat(inp.name, parts)
    return RowState(tensors=tensors, positions=np.concatenate([s.positions for s in states]))


def _pad_to(value: np.ndarray, axis: int, length: int, *, left: bool) -> np.ndarray:
    """Zero- (False-) pad ``value`` along ``axis`` to ``length``."""
    missing = length - value.shape[axis]
    if missing == 0:
        return value
    widths = [(0, 0)] * value.ndim
    widths[axis] = (missing, 0) if left else (0, missing)
    return np.pad(value, widths)


def _concat(name: str, parts: list[np.ndarray]) -> np.ndarray:
    shapes = {p.shape[1:] for p in parts}
    if len(shapes) > 1:
        raise ValueError(f"cannot merge rows of {name!r}: per-row shapes differ {sorted(shapes)}")
    return np.concatenate(parts, axis=0)


def split_rows(spec: StepSpec, state: RowState, sizes: Sequence[int]) -> list[RowState]:
    """Cut merged rows back into per-sentence states, dropping cache columns none of its rows uses."""
    if sum(sizes) != state.rows:
        raise ValueError(f"sizes {list(sizes)} do not add up to {state.rows} rows")
    bounds = np.cumsum([0, *sizes])
    return [_trim(spec, _slice(state, a, b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _slice(state: RowState, start: int, stop: int) -> RowState:
    tensors = {name: value[start:stop] for name, value in state.tensors.items()}
    return RowState(tensors=tensors, positions=state.positions[start:stop])


def _trim(spec: StepSpec, state: RowState) -> RowState:
    """Drop leading cache columns that are padding for every row (left there by a merge)."""
    masks = spec.with_role("cache_mask")
    if not masks or state.rows == 0:
        return state
    used = state.tensors[masks[0].name].any(axis=0)  # [past]
    lead = int(np.argmax(used)) if used.any() else used.size
    if lead == 0:
        return state
    tensors = dict(state.tensors)
    for inp in spec.with_role("cache"):
        tensors[inp.name] = np.take(tensors[inp.name], np.arange(lead, used.size), axis=inp.axis)
    for inp in masks:
        tensors[inp.name] = tensors[inp.name][:, lead:]
    return RowState(tensors=tensors, positions=state.positions)


# --- driving beam search --------------------------------------------------------------------------------


class BatchDecoder:
    """A :data:`serving.decoding.beam_search.StepFn` over one batch of rows that all started together."""

    def __init__(self, spec: StepSpec, run_decoder: Runner, rows: RowState) -> None:
        self.spec, self.run_decoder, self.rows = spec, run_decoder, rows

    def __call__(self, tokens: np.ndarray, origin: np.ndarray) -> np.ndarray:
        log_probs, self.rows = run_step(self.spec, self.run_decoder, gather_rows(self.rows, origin), tokens)
        return log_probs  # [rows, V]


def _check_config(spec: StepSpec, config: bs.BeamConfig) -> None:
    if (config.eos_id, config.bos_id) != (spec.eos_id, spec.bos_id):
        raise ValueError(
            f"BeamConfig eos/bos ({config.eos_id}, {config.bos_id}) differ from the model's "
            f"({spec.eos_id}, {spec.bos_id})"
        )
    if spec.max_positions is not None and config.max_length > spec.max_positions:
        raise ValueError(
            f"max_length={config.max_length} exceeds the model's max_positions={spec.max_positions}"
        )


def translate_ids(
    run_encoder: Runner,
    run_decoder: Runner,
    spec: dict[str, Any] | StepSpec,
    src_ids: Sequence[Sequence[int]],
    config: bs.BeamConfig,
) -> list[list[bs.Hypothesis]]:
    """Beam-search every source sentence (ids without EOS), all rows batched in each decoder call."""
    spec = parse_step_spec(spec)
    _check_config(spec, config)
    if not src_ids:
        return []
    encoded = run_encoder(encoder_inputs(spec, src_ids))
    rows = initial_rows(spec, encoded, len(src_ids))
    return bs.beam_search(BatchDecoder(spec, run_decoder, rows), len(src_ids), config)


@dataclass(frozen=True)
class Sentence:
    """One sentence in flight for the scheduler: its search, its decoder rows and what to feed next."""

    beam: bs.BeamState
    rows: RowState  # state of the rows of the previous call (or the single encoder row)
    origin: np.ndarray  # int64 [next rows]: which of ``rows`` each next row continues
    tokens: np.ndarray  # int64 [next rows]

    @property
    def done(self) -> bool:
        return bs.is_done(self.beam)


def start_sentences(spec: StepSpec, encoded: dict[str, np.ndarray], config: bs.BeamConfig) -> list[Sentence]:
    """Sentences ready to join the scheduler from one encoder call (one row each, BOS to feed)."""
    _check_config(spec, config)
    n = len(next(iter(encoded.values())))
    rows = split_rows(spec, initial_rows(spec, encoded, n), [1] * n)
    first = np.zeros(1, dtype=np.int64)
    bos = np.full(1, spec.bos_id, dtype=np.int64)
    return [Sentence(bs.start(config), r, first, bos) for r in rows]


def step_sentences(spec: StepSpec, run_decoder: Runner, sentences: Sequence[Sentence]) -> list[Sentence]:
    """One decoder call over the live rows of every unfinished sentence, then one search step each."""
    live = [s for s in sentences if not s.done]
    if not live:
        return list(sentences)
    merged = merge_rows(spec, [gather_rows(s.rows, s.origin) for s in live])  # [sum rows, ...]
    log_probs, merged = run_step(spec, run_decoder, merged, np.concatenate([s.tokens for s in live]))
    sizes = [len(s.tokens) for s in live]
    parts = iter(
        zip(split_rows(spec, merged, sizes), np.split(log_probs, np.cumsum(sizes)[:-1]), strict=True)
    )
    out = []
    for s in sentences:
        if s.done:
            out.append(s)
            continue
        rows, lp = next(parts)
        beam, origin, tokens = bs.advance(s.beam, lp)
        out.append(dataclasses.replace(s, beam=beam, rows=rows, origin=origin, tokens=tokens))
    return out
