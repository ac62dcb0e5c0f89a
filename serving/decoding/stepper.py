"""The persistent decoding batch of a translator, driven by the model's JSON step spec (numpy only).

The encoder and decoder graphs are opaque callables ``run(inputs: dict[str, ndarray]) -> dict[str,
ndarray]`` (ONNX Runtime, Triton BLS, a torch module wrapped in a test). :class:`DecodeBatch` keeps the
rows of every running sentence in one set of arrays, by role (docs/translator-interface.md):
``encoder`` constants stored once per sentence and expanded to rows, rewritten only for rows whose
sentence changed (:mod:`serving.decoding.rows`: rows keep their physical slot across steps),
``state`` replaced by its output, ``cache`` gathered by beam origin and grown by the step's entries
in one copy per step (``cache_mask`` marks each row's valid columns: a sentence that joins later sees
the earlier columns masked, so every row computes exactly what it would alone; columns no live
sentence uses are dropped in the same copy), ``positions`` per row. Sentences join (one encoder call,
their rows appended) and leave (rows from the tail refill theirs) between steps; each step
is one decoder call and one vectorized :func:`serving.decoding.beam_search.step` for all sentences.

:mod:`serving.decoding.offline` decodes whole batches of sentences to the end over it (export's ONNX
parity check, the Triton python model, the bench); the iteration-level scheduler drives a
:class:`DecodeBatch` itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.decoding import beam_search as bs
from serving.decoding import compiled_step, native, native_decoder
from serving.decoding.compiled_step import address
from serving.decoding.native_decoder import NativeDecoder, tensor_fields
from serving.decoding.rows import EncoderRows, dense_slots, with_capacity
from serving.decoding.step_spec import (
    ROLES,
    Runner,
    StepSpec,
    check_config,
    parse_step_spec,
)


def _without(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return shape[:axis] + shape[axis + 1 :]


def _is_identity(slot: np.ndarray, size: int) -> bool:
    """Whether ``slot`` is ``0..size-1`` in order (as Python ints: ~1.5 us at 52 rows against ~6 for
    numpy's array_equal with an arange, at nearly every step)."""
    return slot.size == size and slot.tolist() == list(range(size))


@dataclass(frozen=True)
class Finished:
    """A sentence that left the batch: the caller's key and its hypotheses, or why it failed."""

    key: Any
    hypotheses: list[bs.Hypothesis]
    error: str | None = None


class DecodeBatch:
    """Rows of all running sentences in one set of arrays; sentences join and leave between steps.

    Search rows (``beams``: each sentence's rows contiguous, in sentence order) live in physical rows
    ``slot`` (:mod:`serving.decoding.rows`): state, cache, positions and tokens are stored in physical
    order, and rows keep their slot across steps, so a layout change rewrites only the encoder rows
    whose sentence changed. With ``indexed`` (a decoder with a ``row_place`` input whose encoder inputs
    have an axis of their own), physical rows are the search rows in search order, and the encoder
    inputs are fed once per sentence, as stored, with each row's place in that store (``row_place``):
    no encoder rows are copied, and a step that widens or narrows sentences moves only their cache rows
    (docs/translator-interface.md). Not thread-safe: one thread at a time calls :meth:`join`,
    :meth:`step` and :meth:`remove`.
    """

    def __init__(self, spec: dict[str, Any] | StepSpec, indexed: bool = False) -> None:
        self.spec = parse_step_spec(spec)
        if indexed and not self.spec.indexed:
            raise ValueError("indexed rows need a decoder whose step spec has a 'row_place' input")
        self.indexed = indexed  # rows in search order over the encoder store (row_place)
        self.beams: bs.Beams | None = None
        self.keys: list[Any] = []
        self.uids = np.zeros(0, dtype=np.int64)  # [S] identity of each sentence
        self.lengths = np.zeros(0, dtype=np.int64)  # [S] source length (EOS included)
        self.joined = np.zeros(0, dtype=np.int64)  # [S] first cache column of each sentence
        self.owner = np.zeros(0, dtype=np.int64)  # [S] its slot in the encoder store
        self.slot = np.zeros(0, dtype=np.int64)  # [R] physical row of each search row (indexed: r)
        self.physical = 0  # physical rows the next call runs (R)
        self._identity = np.zeros(0, dtype=np.int64)  # indexed: 0..n-1 for n >= the rows of any step
        self.rows: dict[str, np.ndarray] = {}  # [capacity, ...] state and cache, physical order
        self.positions = np.zeros(0, dtype=np.int64)  # [R] physical order
        self.tokens = np.zeros(0, dtype=np.int64)  # [R] physical order: what each row feeds next
        self.column = 0  # cache length along each cache's axis (columns before `joined` are masked)
        self._encoder = EncoderRows({inp.name: inp.pad_axis for inp in self.spec.with_role("encoder")})
        self._carried = self.spec.with_role("state", "cache")  # looked up once: used at every step
        self._named = {role: [i.name for i in self.spec.with_role(role)] for role in ROLES}
        # a NativeDecoder can run this spec's steps: its roles are the ones kiln_decode_step feeds
        self._native_roles = not self._named["state"] and all(
            len(inp.init_shape) <= 4 for inp in self.spec.with_role("cache")
        )
        # each cache's output and the elements of one row's entry (one column on its axis): the sizes of
        # the buffers a compiled call writes, looked up at every call (the other dims are fixed by its spec)
        self._entry_sizes = [
            (
                inp.output,
                math.prod(d for i, d in enumerate(inp.init_shape) if i not in (0, inp.axis)),
                np.dtype(self.spec.dtypes.get(inp.name, "float32")),
            )
            for inp in self.spec.with_role("cache")
        ]
        self._capacity = 0  # rows allocated in `rows` (the live rows after a step: exact-size buffers
        # reuse freed heap memory; spare rows made each step's new buffers fresh, page-faulting memory)
        self._in_order = True  # slot == arange(R): physical order is the search order
        self._layout: tuple[np.ndarray, dict[str, np.ndarray]] | None = None  # row sentences, encoder feed
        self._plan: tuple | None = None  # kiln_decode_step's plan for the layout (see _native_plan)
        self._fields: tuple | None = None  # the plan's tensor fields but the row counts (_tensor_fields)
        self.stop: np.ndarray | None = None  # int64 [1]: a compiled multi-step call stops once nonzero
        # steps a compiled call (indexed rows) runs on after a step that finished a sentence, which waits
        # for its answer meanwhile; 0: that step ends the call (see _native_step)
        self.hold_steps = 0
        self.last_steps = 1  # decoder steps the last step() call ran
        self._next_uid = 0

    @property
    def size(self) -> int:
        """Sentences in the batch."""
        return len(self.keys)

    @property
    def live_rows(self) -> int:
        """Decoder rows the next step runs."""
        return int(self.slot.shape[0])

    def join(
        self,
        keys: Sequence[Any],
        encoded: dict[str, np.ndarray],
        configs: Sequence[bs.BeamConfig],
        lengths: Sequence[int],
    ) -> None:
        """Add sentences from one encoder call (row ``i`` of every output is sentence ``i``); their rows
        go after the others, physically too."""
        n, size = len(keys), self.physical
        missing = [name for name in self.spec.encoder_outputs if name not in encoded]
        if missing:
            raise ValueError(f"the encoder did not return {missing}")
        for config in configs:
            check_config(self.spec, config)
        self._layout = None
        new = bs.start(configs)
        self.beams = new if self.beams is None else bs.concat(self.beams, new)
        self.keys += list(keys)
        self.uids = np.concatenate([self.uids, np.arange(self._next_uid, self._next_uid + n)])
        self._next_uid += n
        lengths = np.asarray(lengths, dtype=np.int64)
        self.lengths = np.concatenate([self.lengths, lengths])
        self.joined = np.concatenate([self.joined, np.full(n, self.column, dtype=np.int64)])
        encoder = {name: encoded[name] for name in self._named["encoder"]}
        self.owner = np.concatenate([self.owner, self._encoder.add(encoder, int(lengths.max(initial=1)))])
        self.slot = np.concatenate([self.slot, size + np.arange(n)])
        for inp in self._carried:
            if inp.role == "state":
                value = np.asarray(encoded[inp.init])
                self._reserve(inp.name, value.shape, value.dtype, size)[size : size + n] = value
            else:  # zero entries for the columns before it joined (masked), written in place
                shape = [n if d == -1 else d for d in inp.init_shape]
                shape[inp.axis] = self.column
                dtype = np.dtype(self.spec.dtypes.get(inp.name, "float32"))
                self._reserve(inp.name, tuple(shape), dtype, size)[size : size + n] = 0
        self.positions = np.concatenate([self.positions, np.zeros(n, dtype=np.int64)])
        self.tokens = np.concatenate([self.tokens, np.full(n, self.spec.bos_id, dtype=np.int64)])
        self.physical = size + n

    def _reserve(self, name: str, shape: tuple[int, ...], dtype: np.dtype, size: int) -> np.ndarray:
        """The buffer of ``name`` (``size`` rows in use) with room for ``shape[0]`` rows (of ``shape[1:]``
        and ``dtype``) after them."""
        if size + shape[0] > self._capacity:
            self._capacity = size + shape[0]
            self.rows = {k: with_capacity(v[:size], self._capacity) for k, v in self.rows.items()}
        if name not in self.rows:
            self.rows[name] = np.empty((self._capacity, *shape[1:]), dtype=dtype)
        return self.rows[name]

    def remove(self, leaving: np.ndarray) -> None:
        """Drop the sentences flagged in ``leaving`` (bool [S]) with their rows."""
        leaving = np.asarray(leaving, dtype=bool)
        if not leaving.any():
            return
        rows_stay = not self.beams.rows[leaving].any()  # e.g. sentences retired after a step
        layout, self._layout = self._layout, None
        self.beams, row_stay = bs.remove(self.beams, leaving)
        stay = np.flatnonzero(~leaving)
        self._encoder.release(self.owner[leaving])
        self.keys = [self.keys[i] for i in stay]
        self.uids, self.lengths, self.joined = self.uids[stay], self.lengths[stay], self.joined[stay]
        self.owner = self.owner[stay]
        if not self.keys:  # empty: start afresh (no columns, no rows, no source width)
            self.beams, self.rows, self.column, self._capacity = None, {}, 0, 0
            self._encoder = EncoderRows(self._encoder.pad_axes)
            self.slot = self.positions = self.tokens = np.zeros(0, dtype=np.int64)
            self._in_order, self.physical = True, 0
            return
        width = self._encoder.width
        if rows_stay:  # no row leaves: the layout stands, with the staying sentences renumbered
            if layout is not None:
                renumber = np.cumsum(~leaving) - 1  # [S] old sentence index -> new (the staying ones)
                self._layout = renumber[layout[0]], *layout[1:]
        elif self.indexed:  # rows stay in search order: the staying ones gathered
            self._gather(row_stay)
        elif row_stay.size < self.live_rows:
            self._compact(self.slot[row_stay])
        self._encoder.fit(int(self.lengths.max()))
        if self._encoder.width != width:  # the encoder rows were re-padded: fed anew
            self._layout = None

    def _compact(self, kept: np.ndarray) -> None:
        """Physical rows ``0..R'-1`` for the rows that stay (at slots ``kept``): those beyond move into
        the freed slots, the others stay put."""
        size = kept.size
        self.slot = dense_slots(kept, size)
        moved = np.flatnonzero(self.slot != kept)
        src, dst = kept[moved], self.slot[moved]  # src >= size > dst: no overlap
        for value in (*self.rows.values(), self.positions, self.tokens):
            value[dst] = value[src]
        self.positions, self.tokens = self.positions[:size], self.tokens[:size]
        self._in_order = _is_identity(self.slot, size)
        self.physical = size

    def _gather(self, index: np.ndarray) -> None:
        """Physical rows ``0..R'-1`` holding the rows at ``index`` (search order kept: indexed rows)."""
        self.rows = {name: value[index] for name, value in self.rows.items()}
        self.positions, self.tokens, self._capacity = self.positions[index], self.tokens[index], index.size
        self.slot, self.physical = np.arange(index.size), index.size

    def step(self, run_decoder: Runner, joining: int = 0, steps: int = 1) -> list[Finished]:
        """One decoder call over every live row, one search step; returns the sentences that left.

        ``joining``: sentences expected to :meth:`join` before the next step. The buffers this step
        writes anyway get room for their rows, so the join copies nothing; otherwise a join copies
        every cache into bigger buffers (~0.4 ms a join at c=32). A wrong guess costs nothing but
        that copy (too few) or unused rows (too many).

        ``steps``: a decoder with a compiled step (``run_decoder.native``) may run up to this many steps
        in one call while no sentence changes its rows (:meth:`_native_step`); :attr:`last_steps` says
        how many ran."""
        self.last_steps = 1
        if self.live_rows == 0:
            return []
        decoder = getattr(run_decoder, "native", None)
        if decoder is not None and self._native_roles and int(self.beams.beam.max()) <= native.MAX_BEAM:
            return self._native_step(decoder, joining, min(steps, native_decoder.MAX_STEPS))
        outputs = run_decoder(self._feed())
        missing = [name for name in self.spec.decoder_outputs if name not in outputs]
        if missing:
            raise ValueError(f"the decoder did not return {missing}")
        log_probs = np.asarray(outputs["log_probs"], dtype=np.float32)  # [R, V] physical order
        before = self.beams.rows
        result = compiled_step.step(self.beams, log_probs, None if self._in_order else self.slot)
        self.beams = result.beams
        self._advance_rows(outputs, result.origin, before, result.tokens, joining)
        return self._retire()

    def _native_step(self, decoder: NativeDecoder, joining: int, steps: int) -> list[Finished]:
        """:meth:`step` through ``kiln_decode_step`` (:mod:`serving.decoding.native_decoder`): each step's
        decoder run and beam step in C, and the rows' advance too while no sentence changes its rows
        and the layout stands (what :meth:`_advance_rows` would then keep), or, with indexed rows,
        whatever the rows do; up to ``steps`` such steps in one call, as long as no sentence leaves,
        the finished hypotheses they offer fit the call's record of them (``PackedStep.found``) and
        :attr:`stop` stays 0. A step that does not advance there is advanced by :meth:`_advance_rows`
        over its outputs. With indexed rows, a step that finishes sentences ends the call only
        :attr:`hold_steps` steps later (at once by default): the finished ones keep their place without
        rows until then, and are retired together when the call returns."""
        size, column, n, beams = self.physical, self.column, self.size, self.beams
        sentence, encoder, row_place = self._current_layout()
        # rows any step of this call may run: a sentence's rows never exceed its beam
        most = max(size, int(beams.beam.sum())) if self.indexed else size
        if self.indexed and self._identity.size < most:
            self._identity = np.arange(max(most, 2 * self._identity.size), dtype=np.int64)
        holder = self._identity if self.indexed else (self.slot if self._in_order else None)
        steps = steps if holder is not None else 1
        plan, log_probs = self._native_plan(decoder, sentence, encoder, holder, most)
        packed = compiled_step.pack(beams, log_probs, None if self._in_order else self.slot, second=steps > 1)
        capacity = max(most, size + joining)
        tokens, at_tokens = decoder.pair("tokens", capacity, np.int64)
        positions, at_positions = decoder.pair("positions", capacity, np.int64)
        joined = self.joined = np.ascontiguousarray(self.joined, dtype=np.int64)  # advanced in place
        held = [
            np.ascontiguousarray(self.tokens, dtype=np.int64),
            np.ascontiguousarray(self.positions, dtype=np.int64),
        ]
        mask = (
            decoder.buffer_at("cache_mask", most * (column + steps), np.bool_)[1]
            if self._named["cache_mask"]
            else 0
        )
        dyn = [
            address(packed.args),
            0 if packed.second is None else address(packed.second[0]),
            steps,
            column,
            address(joined),
            address(held[0]),
            address(held[1]),
            *at_tokens,
            *at_positions,
            mask,
        ]
        grown = []
        for inp, (_, per_row, _) in zip(self._carried, self._entry_sizes, strict=True):  # caches only
            old = self.rows[inp.name][:size]  # (see _native_roles)
            shape, axis = old.shape, inp.axis
            after, at_after = decoder.pair(inp.name, capacity * per_row * (column + steps), old.dtype)
            held.append(np.ascontiguousarray(old))
            dyn += [address(held[-1]), *at_after]
            grown.append((inp.name, after, shape, axis))
        if steps > 1:  # the finished hypotheses of the steps before the last: [count, records]
            records, width = native_decoder.FOUND_STEPS * packed.room, 4 + beams.prefixes.shape[1]
            packed.found = decoder.buffer("found", 1 + records * width, np.int64)
            packed.found[0] = 0
            dyn += [address(packed.found), records]
        else:
            dyn += [0, 0]
        if self.indexed:  # each row's sentence and place, which a step that changes the rows rewrites
            (row_sentence, at_sentence), (places, at_places) = (
                decoder.buffer_at(name, most, np.int64) for name in ("row_sentence", "row_place")
            )
            row_sentence[:size], places[:size] = sentence, row_place
            held.append(np.ascontiguousarray(self.owner, dtype=np.int64))
            dyn += [at_sentence, at_places, address(held[-1])]
        else:
            dyn += [0, 0 if row_place is None else address(row_place), 0]
        dyn = np.array(dyn, dtype=np.int64)
        decoder.step(plan, dyn)
        ran, advanced, kept, columns, which, advances, changed, rows = decoder.result[:8].tolist()
        result = packed.result(kept, which, ran)
        self.beams, self.last_steps = result.beams, ran
        if changed:  # rows widened, narrowed or left in C: search order, `rows` of them
            if not advanced:
                raise RuntimeError("kiln_decode_step changed the rows and handed the step back")
            self._layout, self.slot, size, self.physical = None, np.arange(rows), rows, rows
        if advances:  # the state after the last advance, in the buffers it wrote
            now = 0 if advances & 1 else 1
            self.tokens, self.positions = tokens[now][:size], positions[now][:size]
            for name, after, shape, axis in grown:
                dims = (capacity, *shape[1:axis], columns, *shape[axis + 1 :])
                self.rows[name] = after[now][: math.prod(dims)].reshape(dims)
            self.column, self._capacity = columns, capacity
            decoder.turn ^= advances & 1  # the next call's first buffers are not these
        if not advanced and self.beams.rows.any():  # (none left: the batch empties, nothing to lay out)
            before = decoder.result[8 : 8 + n]
            _, entries = self._outputs(decoder, size, most)  # the buffers the plan has the call write
            self._advance_rows(
                {"log_probs": log_probs, **entries}, result.origin, before, result.tokens, joining
            )
        return self._retire()

    def _native_plan(
        self,
        decoder: NativeDecoder,
        sentence: np.ndarray,
        encoder: dict[str, np.ndarray],
        holder: Any,
        most: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``kiln_decode_step``'s plan for the current layout (built again only when the layout, the
        rows or a buffer changed) and the log-probs it writes; the buffers of the outputs have room for
        ``most`` rows (the rows of a call's later steps, with indexed rows). The views of each cache's
        new entries (:meth:`_outputs`) are only made where Python advances a step itself."""
        size, n = self.physical, self.size
        key = (decoder, self._layout, holder, self.slot, self.stop)
        sizes = (decoder.generation, size, n, most, self.hold_steps)
        cached = self._plan
        if (
            cached is not None
            and cached[1] == sizes
            and all(a is b for a, b in zip(cached[0], key, strict=True))
        ):
            return cached[2], cached[3]
        vocab = self.spec.vocab_size
        log_probs = decoder.buffer("log_probs", most * vocab, np.float32)[: size * vocab].reshape(size, vocab)
        for output, per_row, dtype in self._entry_sizes:  # grown here: the plan holds their addresses
            decoder.buffer(output, most * per_row, dtype)
        result = decoder.result = decoder.buffer("result", 8 + n + most, np.int64)
        steps_scratch = decoder.buffer("steps", n, np.int64)
        sizes = (decoder.generation, size, n, most, self.hold_steps)  # after the buffers above grew
        tensors, caches, held = self._tensor_fields(decoder, encoder, size)
        head = [
            decoder.session,
            len(decoder.inputs),
            1 + len(self._carried),
            address(result),
            int(self.indexed),  # steps may change the rows (search order, row_place)
            address(sentence),
            0 if holder is None else address(holder),
            address(holder if self.indexed else self.slot),
            size,
            n,
            address(result) + 8 * 8,
            len(self._carried),
            0 if self.stop is None else address(self.stop),
            address(steps_scratch),
            self.hold_steps if self.indexed else 0,
        ]
        plan = np.concatenate([np.array(head, dtype=np.int64), tensors, caches])
        self._plan = (key, sizes, plan, log_probs, held)
        return plan, log_probs

    def _outputs(
        self, decoder: NativeDecoder, size: int, room: int = 0
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The buffers a call over ``size`` rows writes (with room for ``room`` rows): the log-probs
        ``[size, V]`` and each cache's new entries (one column on its axis), by output name."""
        vocab, room = self.spec.vocab_size, max(room, size)
        log_probs = decoder.buffer("log_probs", room * vocab, np.float32)[: size * vocab].reshape(size, vocab)
        entries = {}
        for inp in self._carried:
            shape, axis, dtype = self.rows[inp.name].shape, inp.axis, self.rows[inp.name].dtype
            entry_shape = (size, *shape[1:axis], 1, *shape[axis + 1 :])
            count, per_row = math.prod(entry_shape), math.prod(entry_shape[1:])
            buffer = decoder.buffer(inp.output, room * per_row, dtype)
            entries[inp.output] = buffer[:count].reshape(entry_shape)
        return log_probs, entries

    def _tensor_fields(
        self, decoder: NativeDecoder, encoder: dict[str, np.ndarray], size: int
    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """The plan's TENSOR fields of every input and output (``ort_step.c``) for ``size`` physical rows,
        its CACHE fields, and the arrays whose addresses they hold. What does not change from step to
        step (names, types, trailing dimensions, the addresses of the encoder rows and of the output
        buffers) is built once per set of buffers; each call copies it and writes the row counts (a
        rebuild of every field cost ~150 us a call, and the layout changes at almost every call)."""
        key = (
            decoder.generation,
            self._encoder,  # encoder: its store or views of its rows, whose addresses and shapes
            self._encoder.version,  # change with its version
            tuple(_without(self.rows[inp.name].shape[1:], inp.axis - 1) for inp in self._carried),
        )  # the cache axis is not in it: the column count is written by kiln_decode_step
        cached = self._fields
        if cached is None or cached[0] is not decoder or cached[1] != key:
            cached = self._fields = (decoder, key, *self._build_fields(decoder, encoder, size))
        _, _, fields, rows_at, encoder_at, caches, held = cached
        fields = fields.copy()
        fields[rows_at] = size
        for at, name in encoder_at:
            fields[at] = encoder[name].shape[0]  # places of the store (indexed) or rows
        return fields, caches, held

    def _build_fields(self, decoder: NativeDecoder, encoder: dict[str, np.ndarray], size: int) -> tuple:
        """:meth:`_tensor_fields`' template: the fields for ``size`` rows (TENSOR integers a tensor, one
        flat array), the positions of the row counts to write (those of the encoder inputs apart, by
        name), the CACHE fields and the arrays the fields point into. The data of tokens, positions,
        mask, row places and caches, the column count on the cache axis and the row counts are written
        by ``kiln_decode_step`` at each step."""
        kinds: dict[str, tuple[int, Any]] = {
            name: (native_decoder.FIXED, value) for name, value in encoder.items()
        }
        for name in self._named["tokens"]:
            kinds[name] = (native_decoder.TOKENS, np.empty(size, dtype=np.int64))
        for name in self._named["positions"]:
            kinds[name] = (native_decoder.POSITIONS, np.empty(size, dtype=np.int64))
        for name in self._named["cache_mask"]:
            kinds[name] = (native_decoder.MASK, np.empty((size, self.column), dtype=np.bool_))
        for name in self._named["row_place"]:
            kinds[name] = (native_decoder.ROW_PLACE, np.empty(size, dtype=np.int64))
        log_probs, entries = self._outputs(decoder, size)
        outputs = {"log_probs": log_probs, **entries}
        caches = []
        for index, inp in enumerate(self._carried):
            value = self.rows[inp.name][:size]
            kinds[inp.name] = (native_decoder.CACHE + index, value)
            shape, axis = value.shape, inp.axis
            caches += [
                math.prod(shape[1:axis]),
                math.prod(shape[axis + 1 :]),
                value.itemsize,
                index + 1,
                axis,
            ]
        tensors: list[int] = []
        held, rows_at, encoder_at = list(outputs.values()), [], []
        named = [(name, *kinds[name]) for name in decoder.inputs if name in kinds]
        if len(named) < len(decoder.inputs):
            missing = [name for name in decoder.inputs if name not in kinds]
            raise ValueError(f"the ONNX graph needs inputs {missing}; got {sorted(kinds)}")
        named += [(name, native_decoder.ROWS, value) for name, value in outputs.items()]
        for index, (name, kind, value) in enumerate(named):
            value = np.ascontiguousarray(value)
            held.append(value)
            tensors += tensor_fields(decoder.name_address[name], value, kind)
            dim0 = index * native_decoder.TENSOR + 4
            if name in encoder:
                encoder_at.append((dim0, name))
            else:
                rows_at.append(dim0)
        fields = np.array(tensors, dtype=np.int64)
        return fields, np.array(rows_at, dtype=np.int64), encoder_at, np.array(caches, dtype=np.int64), held

    def _next_slots(self, before: np.ndarray) -> np.ndarray:
        """Physical rows after a step: sentence ``s``'s ``k``-th row keeps the slot of its ``k``-th row
        before, where it had one; new rows take freed slots. Back to the search order when most rows
        change anyway (e.g. every sentence widening from one row to ``beam``)."""
        after = self.beams.rows
        size = int(after.sum())
        if self._in_order and np.array_equal(before, after):
            return self.slot
        sentence = np.repeat(np.arange(after.size), after)  # [R']
        rank = np.arange(size) - (np.cumsum(after) - after)[sentence]
        had = rank < before[sentence]
        old = np.where(had, (np.cumsum(before) - before)[sentence] + rank, 0)
        preferred = np.where(had, self.slot[old] if self.slot.size else 0, -1)  # [R']
        if 2 * np.count_nonzero((preferred >= 0) & (preferred < size)) <= size:
            return np.arange(size)
        return dense_slots(preferred, size)

    def _advance_rows(
        self,
        outputs: dict[str, np.ndarray],
        origin: np.ndarray,
        before: np.ndarray,
        tokens: np.ndarray,
        joining: int = 0,
    ) -> None:
        """Rows after a step, in their new slots, gathered by beam ``origin``: states replaced; each cache
        gathered and grown by this step's entries in one copy, without the leading columns no live
        sentence uses any more; with room for the rows of ``joining`` sentences after the live ones."""
        if self.indexed:  # search order: row r of the call just made is search row r
            source, self.tokens, size = origin, tokens, int(self.beams.rows.sum())
            if np.array_equal(before, self.beams.rows):
                slot = self.slot
            else:  # a sentence widened, narrowed or finished: other rows, other places
                slot, self._layout = np.arange(size), None
        else:
            slot = self._next_slots(before)
            size = slot.size
            if self._in_order and slot is self.slot:
                source, self.tokens = origin, tokens  # [R'] physical rows of the call just made
            else:
                self._layout = None
                source = np.empty(size, dtype=np.int64)
                source[slot] = self.slot[origin]
                self.tokens = np.empty(size, dtype=np.int64)
                self.tokens[slot] = tokens
                self._in_order = _is_identity(slot, size)
        self.slot, self.physical = slot, size
        # new buffers below hold the live rows and the expected joiners' (a join beyond them reallocates)
        self._capacity = size + joining
        live = self.beams.rows > 0
        lead = int(self.joined[live].min(initial=self.column))
        for inp in self._carried:
            new = np.asarray(outputs[inp.output])
            if inp.role == "state":
                self.rows[inp.name] = np.empty((self._capacity, *new.shape[1:]), dtype=new.dtype)
                np.take(new, source, axis=0, out=self.rows[inp.name][:size], mode="clip")
                continue
            old = self.rows[inp.name]
            shape = list(old.shape)
            shape[0], shape[inp.axis] = self._capacity, self.column - lead + 1
            grown = np.empty(shape, dtype=old.dtype)  # [R', ..., kept columns + 1, ...]
            compiled_step.gather_grow(old, new, source, inp.axis, lead, grown)
            self.rows[inp.name] = grown
        self.positions = self.positions[source] + 1
        self.joined -= lead
        self.column += 1 - lead

    def _retire(self) -> list[Finished]:
        done = self.beams.done
        if not done.any():
            return []
        beams = self.beams
        out = [
            Finished(
                self.keys[i],
                [] if beams.failed[i] else bs.results(beams, i),
                "the decoder returned NaN log-probs" if beams.failed[i] else None,
            )
            for i in np.flatnonzero(done)
        ]
        self.remove(done)
        return out

    def _feed(self) -> dict[str, np.ndarray]:
        """The named inputs of the next decoder call, in physical row order."""
        size = self.physical
        sentence, encoder, row_place = self._current_layout()
        feed = {name: value[:size] for name, value in self.rows.items()}
        for name in self._named["row_place"]:
            feed[name] = row_place  # [R]
        for name in self._named["tokens"]:
            feed[name] = self.tokens  # [R]
        for name in self._named["positions"]:
            feed[name] = self.positions  # [R]
        for name in self._named["cache_mask"]:
            feed[name] = np.arange(self.column) >= self.joined[sentence, None]  # [R, past]
        feed.update(encoder)
        return feed

    def _current_layout(self) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
        """Each physical row's sentence, the encoder inputs of the next call and each row's place in
        them (``row_place``; None where the decoder takes none), laid out again only after rows changed
        sentence."""
        if self._layout is None:  # rows changed sentence since the last call
            sentence = np.repeat(np.arange(self.size), self.beams.rows)  # [R] search order
            if self.indexed:  # the store as it is, each row reading its sentence's place
                self._layout = sentence, self._encoder.store, self.owner[sentence]
            else:
                if not self._in_order:
                    physical = np.empty_like(sentence)
                    physical[self.slot] = sentence
                    sentence = physical  # [R] physical order
                encoder = self._encoder.for_rows(self.owner[sentence], self.uids[sentence])
                row_place = np.arange(sentence.size) if self.spec.indexed else None  # its own row
                self._layout = sentence, encoder, row_place
        return self._layout
