"""How a :class:`serving.decoding.stepper.DecodeBatch` steps through a compiled decoder call.

``kiln_decode_step`` (``ort_step.c``, :mod:`serving.decoding.native_decoder`) runs a step's decoder
graph, the beam step and the rows' advance in C, several steps a call while no sentence changes its
rows. It reads a *plan*: an int64 array of fields that name every input and output tensor of the
graph, where its data lives, its dims and what each step rewrites. This module builds that plan from
the batch's rows (cached while the layout and buffers stand: a rebuild cost ~150 us a call), packs
each call's changing arguments, and takes the call's result back into the batch. The batch's own
arrays and its Python step live in :mod:`serving.decoding.stepper`; :class:`NativeSteps` is the part
of the batch that speaks to the C call, kept apart so each module reads as one concern.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from serving.decoding import compiled_step, native_decoder
from serving.decoding.beam_search import Beams
from serving.decoding.compiled_step import address
from serving.decoding.native_decoder import NativeDecoder, tensor_fields
from serving.decoding.options import Finished
from serving.decoding.rows import EncoderRows
from serving.decoding.step_spec import DecoderInput, StepSpec

# kiln_decode_step's result block: its fixed fields (ort_step.c), then the scratch it is handed
RESULT_FIELDS = 9


def _without(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return shape[:axis] + shape[axis + 1 :]


def _stop_flag(stop: Any) -> np.ndarray:
    """``stop`` (:attr:`DecodeBatch.stop`) as ``kiln_decode_step`` reads it: the int64 at its address,
    re-read at every step, so it must be the caller's own int64 array, not a copy (a bool or int32
    flag was read 8 bytes wide past its end, and a list had no address)."""
    if not isinstance(stop, np.ndarray) or stop.dtype != np.int64 or not stop.size:
        array = isinstance(stop, np.ndarray)
        got = f"{stop.dtype} array of size {stop.size}" if array else type(stop).__name__
        raise ValueError(f"DecodeBatch.stop must be an int64 array of one element or more, got: {got}")
    return stop


class _Call(NamedTuple):
    """One ``kiln_decode_step`` call's changing arguments and the buffers its advances write."""

    dyn: np.ndarray  # addresses and counts, in ort_step.c's order
    held: list[np.ndarray]  # arrays dyn points into: alive until the call returns
    tokens: tuple[np.ndarray, ...]  # the pair of buffers the advances alternate between
    positions: tuple[np.ndarray, ...]
    grown: list[tuple[str, np.ndarray, tuple[int, ...], int]]  # each cache: name, buffer pair, shape, axis
    capacity: int  # rows the buffers have room for
    most: int  # rows any step of the call may run


class NativeSteps:
    """:class:`serving.decoding.stepper.DecodeBatch`'s steps through ``kiln_decode_step``.

    A mixin: it reads and writes the batch's rows (``rows``, ``slot``, ``tokens``, ``positions``,
    ``column``, ``joined``, ``owner``, ``beams``) and calls its Python advance (``_advance_rows``) for
    a step the C call hands back; it owns the plan caches ``_plan`` and ``_fields``."""

    spec: StepSpec
    indexed: bool
    beams: Beams
    rows: dict[str, np.ndarray]
    slot: np.ndarray
    physical: int
    column: int
    tokens: np.ndarray
    positions: np.ndarray
    joined: np.ndarray
    owner: np.ndarray
    stop: np.ndarray | None
    hold_steps: int
    last_steps: int
    last_rows: int
    size: int  # sentences (a property of the batch)
    _identity: np.ndarray
    _in_order: bool
    _capacity: int
    _layout: Any
    _plan: tuple | None
    _fields: tuple | None
    _encoder: EncoderRows
    _carried: list[DecoderInput]
    _named: dict[str, list[str]]
    _entry_sizes: list[tuple[str, int, np.dtype]]

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
        size, n = self.physical, self.size
        sentence, encoder, row_place = self._current_layout()
        most = self._most_rows(size)
        holder = self._identity if self.indexed else (self.slot if self._in_order else None)
        steps = steps if holder is not None else 1
        plan, log_probs = self._native_plan(decoder, sentence, encoder, holder, most)
        packed = compiled_step.pack(
            self.beams, log_probs, None if self._in_order else self.slot, second=steps > 1
        )
        call = self._call_arguments(
            decoder, packed, steps, max(most, size + joining), most, sentence, row_place
        )
        decoder.step(plan, call.dyn)  # (call.held keeps what dyn points into alive until here)
        return self._take_result(decoder, packed, call, size, n, log_probs, joining)

    def _most_rows(self, size: int) -> int:
        """The rows any step of a call may run: with indexed rows each sentence's beam (a sentence's rows
        never exceed it), the identity map grown to cover them; else the ``size`` rows there are."""
        if not self.indexed:
            return size
        most = max(size, int(self.beams.beam.sum()))
        if self._identity.size < most:
            self._identity = np.arange(max(most, 2 * self._identity.size), dtype=np.int64)
        return most

    def _call_arguments(
        self,
        decoder: NativeDecoder,
        packed: compiled_step.PackedStep,
        steps: int,
        capacity: int,
        most: int,
        sentence: np.ndarray,
        row_place: np.ndarray | None,
    ) -> _Call:
        """The call's changing arguments (``dyn``: addresses and counts in ``ort_step.c``'s order) and
        the buffers its advances write, for up to ``capacity`` rows."""
        size, column = self.physical, self.column
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
        grown = self._cache_arguments(decoder, capacity * (column + steps), dyn, held)
        if steps > 1:  # the finished hypotheses of the steps before the last: [count, records]
            records, width = native_decoder.FOUND_STEPS * packed.room, 4 + self.beams.prefixes.shape[1]
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
        return _Call(np.array(dyn, dtype=np.int64), held, tokens, positions, grown, capacity, most)

    def _cache_arguments(
        self, decoder: NativeDecoder, room: int, dyn: list[int], held: list[np.ndarray]
    ) -> list[tuple[str, tuple[np.ndarray, ...], tuple[int, ...], int]]:
        """Each cache's current rows and the pair of buffers its advances write (``room`` entries a
        row), appended to the call's ``dyn`` (and what it points into to ``held``); returns each cache's
        name, buffer pair, shape and growing axis."""
        grown = []
        size = self.physical
        for inp, (_, per_row, _) in zip(self._carried, self._entry_sizes, strict=True):  # caches only
            old = self.rows[inp.name][:size]  # (see _native_roles)
            after, at_after = decoder.pair(inp.name, room * per_row, old.dtype)
            held.append(np.ascontiguousarray(old))
            dyn += [address(held[-1]), *at_after]
            grown.append((inp.name, after, old.shape, inp.axis))
        return grown

    def _take_result(
        self,
        decoder: NativeDecoder,
        packed: compiled_step.PackedStep,
        call: _Call,
        size: int,
        n: int,
        log_probs: np.ndarray,
        joining: int,
    ) -> list[Finished]:
        """The call's result taken into the batch (``size`` rows and ``n`` sentences before it): the
        search, the rows it changed, the state after its last advance, in the buffers that advance
        wrote, and the Python advance of a step it handed back."""
        fields = decoder.result[:RESULT_FIELDS].tolist()
        ran, advanced, kept, columns, which, advances, changed, rows, rows_run = fields
        result = packed.result(kept, which, ran)
        # every step ran the rows the call began with unless they changed here (indexed rows, in search
        # order: C summed each step's)
        self.last_rows = rows_run if changed else int(self.slot.shape[0]) * ran
        self.beams, self.last_steps = result.beams, ran
        if changed:  # rows widened, narrowed or left in C: search order, `rows` of them
            if not advanced:
                raise RuntimeError("kiln_decode_step changed the rows and handed the step back")
            self._layout, self.slot, size, self.physical = None, np.arange(rows), rows, rows
        if advances:
            now = 0 if advances & 1 else 1
            self.tokens, self.positions = call.tokens[now][:size], call.positions[now][:size]
            for name, after, shape, axis in call.grown:
                dims = (call.capacity, *shape[1:axis], columns, *shape[axis + 1 :])
                self.rows[name] = after[now][: math.prod(dims)].reshape(dims)
            self.column, self._capacity = columns, call.capacity
            decoder.turn ^= advances & 1  # the next call's first buffers are not these
        if not advanced and self.beams.rows.any():  # (none left: the batch empties, nothing to lay out)
            before = decoder.result[RESULT_FIELDS : RESULT_FIELDS + n]
            _, entries = self._outputs(decoder, size, call.most)  # the buffers the plan has the call write
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
        result = decoder.result = decoder.buffer("result", RESULT_FIELDS + n + most, np.int64)
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
            address(result) + RESULT_FIELDS * 8,
            len(self._carried),
            0 if self.stop is None else address(_stop_flag(self.stop)),
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
        step (names, types, trailing dimensions, the addresses of the output buffers) is built once per
        set of buffers; each call copies it and writes the row counts (a rebuild of every field cost
        ~150 us a call, and the layout changes at almost every call). The encoder's tensors (the store
        or views of its rows) are written into the copy, address and dims, whenever they were replaced
        (a longer source, more places, or a batch that emptied and started afresh: at every sentence
        when requests come one at a time), instead of rebuilding every field for them (~120 -> ~15 us)."""
        key = (
            decoder.generation,
            tuple(_without(self.rows[inp.name].shape[1:], inp.axis - 1) for inp in self._carried),
        )  # the cache axis is not in it: the column count is written by kiln_decode_step
        cached = self._fields
        if cached is None or cached[0] is not decoder or cached[1] != key:
            cached = self._fields = (decoder, key, *self._build_fields(decoder, encoder, size), None)
        _, _, fields, rows_at, encoder_at, caches, held, placed = cached
        fields = fields.copy()
        fields[rows_at] = size
        current = (self._encoder, self._encoder.version)
        if placed is None or placed[0] is not current[0] or placed[1] != current[1]:
            placed = self._place_encoder(fields, encoder, encoder_at, current)
            self._fields = (*cached[:-1], placed)
        fields[placed[2]] = placed[3]  # the encoder tensors' addresses and dims, as placed
        for at, name in encoder_at:
            fields[at] = encoder[name].shape[0]  # places of the store (indexed) or rows
        return fields, caches, [*held, *placed[4]]

    @staticmethod
    def _place_encoder(
        fields: np.ndarray, encoder: dict[str, np.ndarray], encoder_at: list[tuple[int, str]], current: tuple
    ) -> tuple:
        """Where the encoder's tensors lie now: (encoder rows, their version, the field positions of
        each tensor's data address and dims, their values, the arrays they point into)."""
        positions, values, arrays = [], [], []
        for dim0, name in encoder_at:
            value = np.ascontiguousarray(encoder[name])
            if (native_decoder.ONNX_TYPES[value.dtype], value.ndim) != tuple(fields[dim0 - 2 : dim0]):
                raise ValueError(
                    f"encoder tensor {name!r} ({value.dtype}, rank {value.ndim}) does not fit its plan"
                )
            positions += [dim0 - 3, *range(dim0, dim0 + value.ndim)]
            values += [address(value), *value.shape]
            arrays.append(value)
        return (
            *current,
            np.array(positions, dtype=np.int64),
            np.array(values, dtype=np.int64),
            arrays,
        )

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
            if name not in encoder:  # the encoder's are placed, and held, at each call that uses them
                held.append(value)
            tensors += tensor_fields(decoder.name_address[name], value, kind)
            dim0 = index * native_decoder.TENSOR + 4
            if name in encoder:
                encoder_at.append((dim0, name))
            else:
                rows_at.append(dim0)
        fields = np.array(tensors, dtype=np.int64)
        return fields, np.array(rows_at, dtype=np.int64), encoder_at, np.array(caches, dtype=np.int64), held
