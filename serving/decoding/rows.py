"""Physical decoder rows of a decode batch: stable row slots, so a layout change moves only what changed.

The beam search keeps each sentence's rows contiguous and in sentence order (``Beams`` order); the
arrays fed to the decoder need not be in that order. :class:`serving.decoding.stepper.DecodeBatch` keeps
a ``slot`` per search row (its physical row, a permutation of ``0..R-1``) and lets rows keep their
slots from step to step (:func:`dense_slots`), so when sentences join, leave or widen from one row to
``beam`` rows, only the rows whose sentence changed are rewritten. :class:`EncoderRows` keeps the
encoder tensors that way: stored once per sentence (stable sentence slots), expanded to the physical
rows, and rewritten only for rows that now hold another sentence (numpy only). A decoder with a
``row_place`` input reads the store itself, each row at its sentence's place, and its rows stay in
search order (no slots, no per-row copies).
"""

from __future__ import annotations

import numpy as np


def dense_slots(preferred: np.ndarray, size: int) -> np.ndarray:
    """Physical slots ``0..size-1`` for ``size`` rows: row ``i`` keeps ``preferred[i]`` where that is a
    slot below ``size`` (preferences are distinct or -1); the others take the free slots in order."""
    keep = (preferred >= 0) & (preferred < size)  # [size]
    if keep.all():
        return preferred
    taken = np.zeros(size, dtype=bool)
    taken[preferred[keep]] = True
    slots = preferred.copy()
    slots[~keep] = np.flatnonzero(~taken)
    return slots


def capacity_for(rows: int, current: int) -> int:
    """Rows to allocate for at least ``rows``: at least double ``current``, so growth is rare."""
    return max(rows, 2 * current, 8)


def with_capacity(value: np.ndarray, capacity: int) -> np.ndarray:
    """``value`` ``[R, ...]`` copied into a new ``[capacity, ...]`` array (rows beyond R uninitialized)."""
    out = np.empty((capacity, *value.shape[1:]), dtype=value.dtype)
    out[: value.shape[0]] = value
    return out


def _fit_axis(value: np.ndarray, axis: int, width: int) -> np.ndarray:
    """``value`` trimmed or zero- (False-) padded on the right of ``axis`` to ``width`` (a new array)."""
    shape = list(value.shape)
    shape[axis] = width
    out = np.zeros(shape, dtype=value.dtype)
    keep = (slice(None),) * axis + (slice(0, min(width, value.shape[axis])),)
    out[keep] = value[keep]
    return out


class EncoderRows:
    """Encoder tensors ``{name: pad_axis}`` of the running sentences, per sentence and per physical row.

    Both copies are padded on each tensor's pad axis to ``width``, the longest running source (grown
    when a longer one joins, trimmed once the longest running source is 8 shorter, so neither happens
    at every step); padding is masked by the model, so it never changes a result.
    """

    SHRINK_SLACK = 8  # trim the width once it exceeds the longest running source by this much

    def __init__(self, pad_axes: dict[str, int | None]) -> None:
        self.pad_axes = pad_axes
        self.width = 0
        self.store: dict[str, np.ndarray] = {}  # [sentence slots, ...]
        self.used = np.zeros(0, dtype=bool)  # [sentence slots]
        self.rows: dict[str, np.ndarray] = {}  # [row capacity, ...]
        self.version = 0  # counts replacements of the arrays in `store` and `rows` (addresses, shapes)
        self.row_uid = np.zeros(0, dtype=np.int64)  # [row capacity] uid of the sentence held (-1: none)

    def add(self, encoded: dict[str, np.ndarray], longest: int, count: int | None = None) -> np.ndarray:
        """Store the sentences of one encoder call; returns their sentence slots (int64 [n]). ``count``:
        the sentences (default: the rows of ``encoded``, which a decoder with no encoder input leaves
        empty while each sentence still needs its slot)."""
        n = count if count is not None else len(next(iter(encoded.values()))) if encoded else 0
        self.fit(max(longest, self.width))
        free = np.flatnonzero(~self.used)
        if free.size < n:  # grow the store
            capacity = capacity_for(self.used.size + n - free.size, self.used.size)
            self.store = {name: with_capacity(v, capacity) for name, v in self.store.items()}
            self.used = np.concatenate([self.used, np.zeros(capacity - self.used.size, dtype=bool)])
            free = np.flatnonzero(~self.used)
            self.version += 1
        slots = free[:n]
        for name, axis in self.pad_axes.items():
            value = np.asarray(encoded[name])
            if axis is not None and value.shape[axis] != self.width:
                value = _fit_axis(value, axis, self.width)
            if name not in self.store:
                self.store[name] = np.empty((self.used.size, *value.shape[1:]), dtype=value.dtype)
                self.version += 1
            self.store[name][slots] = value
        self.used[slots] = True
        return slots

    def release(self, slots: np.ndarray) -> None:
        """Free sentence slots (rows holding them are rewritten when another sentence needs them)."""
        self.used[slots] = False

    def fit(self, longest: int) -> None:
        """Pad or trim both copies to ``longest`` when it exceeds the width or is well below it."""
        if self.width - self.SHRINK_SLACK < longest <= self.width:
            return
        for name, axis in self.pad_axes.items():
            if axis is not None:
                for copy in (self.store, self.rows):
                    if name in copy:
                        copy[name] = _fit_axis(copy[name], axis, longest)
        self.width = longest
        self.version += 1

    def for_rows(self, owner: np.ndarray, uid: np.ndarray) -> dict[str, np.ndarray]:
        """The tensors of physical rows ``0..R-1`` holding sentences (slots ``owner``, ids ``uid``, [R]):
        rows that held another sentence (or none) are rewritten from the store first."""
        size = owner.size
        if size > self.row_uid.size:  # grow the rows
            capacity = capacity_for(size, self.row_uid.size)
            self.rows = {name: with_capacity(v, capacity) for name, v in self.rows.items()}
            self.version += 1
            pad = capacity - self.row_uid.size
            self.row_uid = np.concatenate([self.row_uid, np.full(pad, -1, dtype=np.int64)])
        stale = np.flatnonzero(self.row_uid[:size] != uid)  # [changed rows]
        if stale.size:
            for name, value in self.store.items():
                if name not in self.rows:
                    self.rows[name] = np.empty((self.row_uid.size, *value.shape[1:]), dtype=value.dtype)
                    self.version += 1
                self.rows[name][stale] = value[owner[stale]]
            self.row_uid[stale] = uid[stale]
        return {name: value[:size] for name, value in self.rows.items()}
