"""A decode batch whose key/value cache stays on the device, stepped at fixed shapes (a CUDA graph each).

On a GPU, :class:`~serving.decoding.stepper.DecodeBatch`'s step copies every cache and the encoder
store to the device and the entries back, at a new shape every step (the cache grows by a column), so
ONNX Runtime's CUDA provider runs its ~130 kernels one launch at a time: ~2-5 ms a step on an H200
whatever the rows (measured with ``python -m bench.gpu_decode_probe``: the same step with its inputs
already on the device 0.9-1.3 ms, and at fixed shapes replayed as a CUDA graph 0.31-0.40 ms at 8-128
rows and 8-64 cache columns).

:class:`ResidentDecodeBatch` keeps the host side of a decode batch (the search, the rows' sentences,
positions, masks, the encoder store) and moves what is big to the device, in fixed-shape
:class:`Layout` buffers: the caches ``[B, H, T, D]`` (``T`` columns, a ring: those not live are masked
off by ``cache_mask``), the encoder store ``[B, ..., S, ...]`` (``S`` source positions, padding
masked), the step's entries and log-probs. ``B``, ``S`` and ``T`` are buckets (powers of two; a
batch's layout only grows, and the next batch starts in it), so a layout's decoder graph has one
shape: ONNX Runtime replays it as a CUDA graph. Each step runs two graphs on the device:

- the **advance** (a graph generated here): the previous step's entries written into their column of
  each cache (ScatterND), then the rows gathered by beam origin (and by whatever joined or left
  since), into the other of two cache sets (ping-pong: a graph's output cannot be its input).
  Columns no live sentence reads are never moved: the ring's offset passes them (attention sums over
  its columns in any order);
- the **step**: the translator's decoder graph with its dimensions fixed to the layout, reading that
  set; only ``log_probs`` ``[B, V]`` comes back for the search.

The inputs a step writes (tokens, positions, cache mask, row places, beam origins, the written
column) are a few KiB in one packed buffer, one copy; a joining sentence's encoder rows are copied
into their store slots alone. A change of layout (rows past a bucket, a longer source, more live
columns than the ring holds) moves the live cache through the host once. The layouts of every rows
bucket are made when the scheduler starts (:meth:`ResidentDecoder.prepare`).

Measured on an H200 (512 held-out sentences, beam 4): the decode engine 2.55x the host batch at 32
sentences a batch, 1.62x at 128, token-identical; through the gateway no gain yet (one process is bound
elsewhere, a loss with four sharing the GPU), so the backend uses it only with
``KILN_RESIDENT_DECODER=1`` (README, "GPU and TensorRT").

Semantics are the decode batch's (docs/translator-interface.md): the same search over the same
decoder, which attends over masked padding here; on the CPU (where this runs without graphs, for the
tests) translations are token-identical to the host batch's, scores equal to float rounding.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from serving.decoding import compiled_step
from serving.decoding.options import Finished
from serving.decoding.resident_layout import (
    ROWS_MIN,
    Layout,
    LayoutKey,
    ResidentDecoder,
    bucket,
)
from serving.decoding.step_spec import Runner, StepSpec
from serving.decoding.stepper import DecodeBatch

log = logging.getLogger(__name__)


def resident_usable(spec: StepSpec, indexed: bool) -> str:
    """Why a decoder cannot step on the device with this engine ('' when it can): it needs the
    indexed layout (an encoder store read through ``row_place``), caches and a cache mask, no state."""
    if not indexed:
        return "its decoder takes no encoder store (row_place)"
    if spec.with_role("state"):
        return "its decoder carries a state (only caches stay on the device)"
    if not spec.with_role("cache") or not spec.with_role("cache_mask"):
        return "its decoder has no cache or no cache mask"
    return ""


class ResidentDecodeBatch(DecodeBatch):
    """A :class:`~serving.decoding.stepper.DecodeBatch` (indexed rows) whose caches live on the device
    (:class:`ResidentDecoder`): the host keeps no cache; each step is the advance then the decoder,
    at the batch's current :class:`Layout`. One step per :meth:`step` call."""

    def __init__(self, spec: dict[str, Any] | StepSpec, decoder: ResidentDecoder) -> None:
        super().__init__(spec, indexed=True)
        self.device = decoder
        self._carried = []  # the caches are the device's: the host batch gathers and grows none
        self._reset_device()

    def prepare(self, max_rows: int) -> None:
        self.device.prepare(max_rows)

    def _reset_device(self) -> None:
        """Nothing pending, nothing stored; the layout stays (an emptied batch's next sentences start
        in it: its rows are masked until written)."""
        # a batch starts in the last layout its decoder used (batches come and go: offline.translate_ids)
        self._key: LayoutKey | None = getattr(self, "_key", None) or self.device.last_key
        self._parity = 0
        # the device column of the host's column 0: the columns are a ring (attention sums over its
        # columns in any order), so dropped columns move the offset, never the data
        self._offset = 0
        self._pending: tuple[np.ndarray, int | None] | None = None  # origin, device column written
        self._stored = False  # whether the device store holds every slot but the fresh ones
        self._fresh: list[int] = []  # store slots written since the device store was last filled

    def _rows_joined(self, before: int, sentences: int) -> None:
        joined = self.physical - before
        # the joining rows read row 0 of the last call: finite, and masked (their columns start here)
        origin, written = self._pending or (np.arange(before, dtype=np.int64), None)
        self._pending = np.concatenate([origin, np.zeros(joined, dtype=np.int64)]), written
        self._fresh += self.owner[-sentences:].tolist() if sentences else []

    def _gather(self, index: np.ndarray) -> None:
        rows = self.physical
        super()._gather(index)
        origin, written = self._pending or (np.arange(rows, dtype=np.int64), None)
        self._pending = origin[index], written

    def remove(self, leaving: np.ndarray) -> None:
        super().remove(leaving)
        if not self.keys:
            self._reset_device()

    def step(self, run_decoder: Runner, joining: int = 0, steps: int = 1) -> list[Finished]:
        self.last_steps = 1
        rows = self.last_rows = self.live_rows
        if rows == 0:
            return []
        layout = self._place(rows)
        pending, self._pending = self._pending, None
        if pending is not None:
            self._advance_inputs(layout, *pending)
        self._step_inputs(layout, rows)
        layout.send()
        if pending is not None:
            layout.advance(self._parity)
            self._parity = 1 - self._parity
        log_probs = layout.step(self._parity)[:rows]
        before = self.beams.rows
        result = compiled_step.step(self.beams, log_probs, None)
        self.beams = result.beams
        live = self.beams.rows > 0
        lead = int(self.joined[live].min(initial=self.column))
        columns = self._key.columns
        written = (self._offset + self.column) % columns  # where this step's entries go
        self._advance_rows({}, result.origin, before, result.tokens, joining)
        self._offset = (self._offset + lead) % columns  # dropped columns are skipped, never moved
        self._pending = np.asarray(result.origin, dtype=np.int64), written
        return self._retire()

    def _place(self, rows: int) -> Layout:
        """This step's layout, with the encoder store filled: a new layout takes the live cache over
        through the host (the pending advance applied there)."""
        current = self._key
        slots = self._encoder.used.size
        key = LayoutKey(
            bucket(max(rows, slots), ROWS_MIN, current.rows if current else 0),
            bucket(max(self._encoder.width, 1), self.device.source_min, current.source if current else 0),
            bucket(self.column + 1, self.device.columns_min, current.columns if current else 0),
        )
        if key != current:
            cache = self._download(current) if current is not None else None
            layout = self.device.layout(key)
            self._stored = self._stored and key == current
            self._key, self._parity, self._offset = key, 0, 0
            self.device.last_key = key
            if cache is not None and self.column:
                self._upload(layout, cache)
        layout = self.device.layout(key)
        self._fill_store(layout)
        return layout

    def _advance_inputs(self, layout: Layout, origin: np.ndarray, written: int | None) -> None:
        views = layout.views
        views["origin"][: origin.size] = origin
        views["origin"][origin.size :] = 0
        for name, write in views.items():
            if name.startswith("write_"):  # nothing to write: the next column, not live until written
                write[..., -1] = (
                    (self._offset + self.column) % layout.key.columns if written is None else written
                )

    def _download(self, key: LayoutKey) -> dict[str, np.ndarray]:
        """The live cache ``[live rows, ..., columns, ...]`` per cache, read from layout ``key`` with the
        pending advance applied here on the host (its rows may outnumber that layout's)."""
        layout = self.device.layout(key)
        origin, written = self._pending or (np.arange(self.live_rows), None)
        self._pending = None
        live = (self._offset + np.arange(self.column)) % key.columns
        out, copy, rows = {}, self.device.copy, int(origin.max(initial=-1)) + 1
        for inp in self.device.caches:
            source = layout.sets[self._parity][inp.name]
            if copy is None:
                value = source.numpy()
            else:  # the rows the origins read, not the whole set
                value = copy.read(source, rows, layout.shapes[inp.name], self.device.types[inp.name])
            if written is not None:
                index = [slice(None)] * value.ndim
                index[inp.axis] = written
                entry = layout.outputs[inp.output].numpy()[: value.shape[0]]
                value[tuple(index)] = np.take(entry, 0, axis=inp.axis)
            out[inp.name] = np.take(value[origin], live, axis=inp.axis)
        return out

    def _upload(self, layout: Layout, cache: dict[str, np.ndarray]) -> None:
        """``cache`` (from :meth:`_download`) into the new layout's current set: its rows alone where
        a partial copy can (the rows beyond hold zeros or stale rows, masked), else the whole set."""
        copy = self.device.copy
        for inp in self.device.caches:
            value = cache[inp.name]
            shape = list(layout.shapes[inp.name])
            if copy is not None:
                shape[0] = value.shape[0]
            full = np.zeros(shape, dtype=self.device.types[inp.name])
            full[tuple(slice(0, n) for n in value.shape)] = value
            target = layout.sets[self._parity][inp.name]
            if copy is None:
                target.update_inplace(full)
            else:
                copy(target, 0, full)
        if copy is not None:
            copy.done()

    def _fill_store(self, layout: Layout) -> None:
        """The encoder store on the device: whole after a layout change, else only the slots written
        since (joining sentences), a copy per run of consecutive slots. The host store re-padding or
        growing changes no slot the device holds (padding is masked), so it costs no copy."""
        copy = self.device.copy
        if self._stored and not self._fresh:
            return
        whole = not self._stored or copy is None
        slots = np.unique(np.asarray(self._fresh, dtype=np.int64))
        runs = np.split(slots, np.flatnonzero(np.diff(slots) != 1) + 1) if slots.size else []
        for inp in self.device.encoder:
            value, shape = layout.store[inp.name], layout.shapes[inp.name]
            host = self._encoder.store[inp.name]
            if copy is None:
                value.update_inplace(_fit(host, shape))
                continue
            if whole:  # the host store's slots (no more than the layout's rows)
                runs = [np.arange(host.shape[0])]
            row_bytes = math.prod(shape[1:]) * host.dtype.itemsize
            for run in runs:
                first, last = int(run[0]), int(run[-1]) + 1
                copy(value, first * row_bytes, _fit(host[first:last], [last - first, *shape[1:]]))
        if copy is not None:
            copy.done()
        self._stored, self._fresh = True, []

    def _step_inputs(self, layout: Layout, rows: int) -> None:
        views = layout.views
        sentence, _, row_place = self._current_layout()
        small = {
            "tokens": (self.tokens, self.spec.pad_id),
            "positions": (self.positions, 0),
            "row_place": (row_place, int(row_place[0])),
        }
        for role, (value, fill) in small.items():
            for name in self._named[role]:
                views[name][:rows] = value
                views[name][rows:] = fill
        for name in self._named["cache_mask"]:
            mask = views[name]
            mask.fill(False)
            live = (self._offset + np.arange(self.column)) % layout.key.columns
            mask[:rows, live] = np.arange(self.column) >= self.joined[sentence, None]


def _fit(value: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``value`` zero- (False-) padded to ``shape`` (it fits in it)."""
    out = np.zeros(shape, dtype=value.dtype)
    out[tuple(slice(0, n) for n in value.shape)] = value
    return out


def open_resident(run_decoder: Runner, spec: StepSpec, indexed: bool) -> ResidentDecoder | None:
    """The runner's :class:`ResidentDecoder`, made at first use, where the runner asks for one
    (``run_decoder.resident``: the backend's choice for a decoder on the CUDA provider) and the decoder
    fits (:func:`resident_usable`); ``None`` otherwise, or with ``KILN_RESIDENT_DECODER=0``."""
    wanted = getattr(run_decoder, "resident", None)
    if not wanted or os.environ.get("KILN_RESIDENT_DECODER", "1") == "0":
        return None
    existing = getattr(run_decoder, "resident_decoder", None)
    if existing is not None:
        return existing
    reason = resident_usable(spec, indexed)
    if reason:
        log.info("decoder steps stay on the host: %s", reason)
        run_decoder.resident = None  # type: ignore[attr-defined]
        return None
    wanted = {"model_file": getattr(run_decoder, "model_file", None), **wanted}
    decoder = ResidentDecoder(spec=spec, **wanted)
    run_decoder.resident_decoder = decoder  # type: ignore[attr-defined]
    return decoder


def decode_batch(spec: dict[str, Any] | StepSpec, indexed: bool, run_decoder: Runner) -> DecodeBatch:
    """The decode batch for ``run_decoder``: a :class:`ResidentDecodeBatch` where it has a resident
    decoder (:func:`open_resident`), else a host :class:`~serving.decoding.stepper.DecodeBatch`."""
    batch = DecodeBatch(spec, indexed)
    decoder = open_resident(run_decoder, batch.spec, indexed)
    return batch if decoder is None else ResidentDecodeBatch(batch.spec, decoder)
