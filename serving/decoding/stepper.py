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
With a compiled decoder (``kiln_decode_step``) the step runs through :class:`serving.decoding.
native_batch.NativeSteps`, the batch's part that builds the C call's plan and takes its result back.

:mod:`serving.decoding.offline` decodes whole batches of sentences to the end over it (export's ONNX
parity check, the Triton python model, the bench); the iteration-level scheduler drives a
:class:`DecodeBatch` itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from serving.decoding import beam_search as bs
from serving.decoding import compiled_step, native, native_decoder
from serving.decoding.native_batch import NativeSteps
from serving.decoding.options import Finished
from serving.decoding.rows import EncoderRows, dense_slots, with_capacity
from serving.decoding.step_spec import (
    ROLES,
    Runner,
    StepSpec,
    check_config,
    parse_step_spec,
)


def decode_batch(spec: dict[str, Any] | StepSpec, indexed: bool, run_decoder: Runner) -> DecodeBatch:
    """A decode batch for ``run_decoder``: one whose caches stay on the device where the runner asks
    for it (``run_decoder.resident``, a decoder on the CUDA provider: :mod:`serving.decoding.resident`),
    else a :class:`DecodeBatch`."""
    if getattr(run_decoder, "resident", None):
        from serving.decoding import resident  # imported only then: Triton's copies of this module lack it

        return resident.decode_batch(spec, indexed, run_decoder)
    return DecodeBatch(spec, indexed)


def _is_identity(slot: np.ndarray, size: int) -> bool:
    """Whether ``slot`` is ``0..size-1`` in order (as Python ints: ~1.5 us at 52 rows against ~6 for
    numpy's array_equal with an arange, at nearly every step)."""
    return slot.size == size and slot.tolist() == list(range(size))


class DecodeBatch(NativeSteps):
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
        self.last_rows = 0  # the decoder rows those steps ran, summed (each step's own count)
        self._next_uid = 0

    def prepare(self, max_rows: int) -> None:
        """Make ready whatever the first steps of up to ``max_rows`` rows would make (nothing here: a
        device-resident batch makes its layouts)."""

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
        self.owner = np.concatenate([self.owner, self._encoder.add(encoder, int(lengths.max(initial=1)), n)])
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
        self._rows_joined(size, n)

    def _rows_joined(self, before: int, sentences: int) -> None:
        """Called at the end of :meth:`join`: ``sentences`` joined, their rows after the ``before``
        there were (a device-resident batch lays them out there too)."""

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
        self.last_steps, self.last_rows = 1, self.live_rows  # a compiled call sets its own
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
        sentence uses any more; with room for the rows of ``joining`` sentences after the live ones.
        Each output must have one row per row of the call (``origin`` indexes them), as ``log_probs``."""
        called = self.physical
        source = self._place_rows(origin, before, tokens)
        size = self.physical
        # new buffers below hold the live rows and the expected joiners' (a join beyond them reallocates)
        self._capacity = size + joining
        live = self.beams.rows > 0
        lead = int(self.joined[live].min(initial=self.column))
        for inp in self._carried:
            new = np.asarray(outputs[inp.output])
            if new.shape[:1] != (called,):  # rows a gather would clip to (state) or read beyond (cache)
                raise ValueError(
                    f"the decoder's {inp.output!r} has shape {new.shape}; the call had {called} rows"
                )
            if inp.role == "state":
                self.rows[inp.name] = np.empty((self._capacity, *new.shape[1:]), dtype=new.dtype)
                np.take(new, source, axis=0, out=self.rows[inp.name][:size], mode="clip")
                continue
            old = self.rows[inp.name]
            shape = list(old.shape)
            shape[0], shape[inp.axis] = self._capacity, self.column - lead + 1
            grown = np.empty(shape, dtype=old.dtype)  # [R', ..., kept columns + 1, ...]
            try:
                compiled_step.gather_grow(old, new, source, inp.axis, lead, grown)
            except ValueError as exc:  # entries of another shape than the cache's
                raise ValueError(f"the decoder's {inp.output!r}: {exc}") from None
            self.rows[inp.name] = grown
        self.positions = self.positions[source] + 1
        self.joined -= lead
        self.column += 1 - lead

    def _place_rows(self, origin: np.ndarray, before: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """The rows' slots after a step (:attr:`slot`, :attr:`physical`) and the tokens they feed next;
        returns, for each new physical row, the row of the call just made it continues (its source)."""
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
        return source

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
