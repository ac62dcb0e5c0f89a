"""The compiled kernels of a decode step (``beam_step.c``), each with its numpy definition as fallback.

:func:`step` is what the decode batch calls: the compiled kernel where it could be built
(:mod:`serving.decoding.native`), else :func:`serving.decoding.beam_search.step`. Both make the same
decisions on the same float32 / float64 arithmetic (``tests/test_native_step.py`` compares them bit for
bit on random searches); the compiled one does a step's work in one call instead of ~50 numpy calls
(measured: 420 -> 165 us per step at batch 32, beam 4; +11 % for the batch engine, +10 % through the
gateway). The kernel decides everything, including which finished hypotheses a sentence keeps; the
:class:`~serving.decoding.beam_search.Hypothesis` objects of the kept ones are made here, in its order,
by the rule it applied.

:func:`gather_grow` is the other per-step kernel: a cache gathered by beam origin and grown by the
step's entries as one contiguous copy per row and head, where numpy's take into the strided column
slice of the new buffer moved the same bytes ~2.5x slower (19 vs 49 us for a ``[104, 4, 10, 32]``
float32 cache). Measured in-process on the demo Transformer (interleaved, medians of 5): scheduler
path at c=32 810-823 -> 869-895 sentences/s, batch engine 1 144-1 156 -> 1 207-1 227.
"""

from __future__ import annotations

import ctypes
import math

import numpy as np

from serving.decoding import native
from serving.decoding.beam_search import Beams, Hypothesis, StepResult, check_log_probs, evolve, keep_best
from serving.decoding.beam_search import step as numpy_step

TOP_BYTES = 16  # one candidate in the kernel's scratch: float32 value, padding, int64 flat index


def step(beams: Beams, log_probs: np.ndarray, row_index: np.ndarray | None = None) -> StepResult:
    """One step over ``log_probs`` ``[R, V]``, search row ``i`` reading row ``row_index[i]`` (default
    ``i``): compiled where available (and beams fit its scratch), else the numpy step."""
    library = native.load()
    if library is None or not beams.scores.size or int(beams.beam.max()) > native.MAX_BEAM:
        check_log_probs(beams, log_probs, row_index)
        return numpy_step(beams, log_probs if row_index is None else log_probs[row_index])
    return native_step(library, beams, log_probs, row_index)  # (pack checks log_probs)


_char = ctypes.c_char


def address(array: np.ndarray) -> int:
    """The address of ``array``'s first byte: through the buffer protocol (~0.2 us) where the array is
    writable and not empty, else numpy's ctypes view (~1 us): the kernel takes 26 arrays a step."""
    try:
        return ctypes.addressof(_char.from_buffer(array))
    except (TypeError, ValueError):
        return array.ctypes.data


def _at(axis: int, index: int | slice) -> tuple:
    """An index selecting ``index`` along ``axis`` (everything on the axes before it)."""
    return (slice(None),) * axis + (index,)


def gather_grow(
    old: np.ndarray, new: np.ndarray, source: np.ndarray, axis: int, lead: int, out: np.ndarray
) -> None:
    """``out[:R]`` = row ``source[r]`` of ``old`` without its first ``lead`` columns on ``axis``, followed by
    row ``source[r]`` of ``new`` (one column on ``axis``), for ``R = len(source)``: the compiled kernel
    where it could be built and the arrays are C-contiguous with one dtype, else numpy. ``new`` and
    ``out`` must have ``old``'s dimensions but rows and ``axis`` (a ValueError otherwise: the kernel
    copies by ``old``'s sizes); ``source`` holds rows of both ``old`` and ``new`` (the caller's)."""
    size = source.shape[0]
    shape, entries, grown = old.shape, new.shape, out.shape  # slices compared: ~0.5 us a call
    if (
        entries[1:axis] != shape[1:axis]
        or entries[axis + 1 :] != shape[axis + 1 :]
        or grown[1:axis] != shape[1:axis]
        or grown[axis + 1 :] != shape[axis + 1 :]
        or entries[axis : axis + 1] != (1,)
        or grown[axis : axis + 1] != (shape[axis] - lead + 1,)
        or grown[:1] < (size,)
        or not 0 <= lead <= shape[axis]
    ):
        raise ValueError(
            f"a cache of shape {shape} on axis {axis} without {lead} leading columns cannot be grown by "
            f"entries of shape {entries} into a buffer of shape {grown} for {size} rows"
        )
    if not out.flags.writeable:  # the kernel wrote it all the same (the memory of a bytes object)
        raise ValueError(f"a cache cannot be grown into a read-only buffer of shape {grown}")
    library = native.load()
    if (
        library is None
        or axis < 1
        or new.shape[axis] != 1
        or not (old.flags.c_contiguous and new.flags.c_contiguous and out.flags.c_contiguous)
        or not (old.dtype == new.dtype == out.dtype)
        or source.dtype != np.int64
        or not source.flags.c_contiguous
    ):
        kept = old[_at(axis, slice(lead, None))]
        np.take(kept, source, axis=0, out=out[:size][_at(axis, slice(0, -1))], mode="clip")
        out[:size][_at(axis, slice(-1, None))] = np.take(new, source, axis=0)
        return
    outer = math.prod(old.shape[1:axis])
    inner = math.prod(old.shape[axis + 1 :])
    library.kiln_gather_grow(
        size,
        outer,
        old.shape[axis],
        lead,
        inner,
        old.itemsize,
        address(old),
        address(new),
        address(source),
        address(out),
    )


def native_step(
    library: ctypes.CDLL, beams: Beams, log_probs: np.ndarray, row_index: np.ndarray | None = None
) -> StepResult:
    """:func:`step` by the kernel (see ``kiln_beam_step`` in ``beam_step.c`` for its arrays; they go
    packed in one int64 array, ``kiln_beam_step_packed``, and its outputs in four blocks: 38 -> 29 us a
    call at batch 1, 128 -> 113 us at batch 32 on replayed steps)."""
    packed = pack(beams, log_probs, row_index)
    return packed.result(library.kiln_beam_step_packed(address(packed.args)))


class PackedStep:
    """The kernel's arguments for one step (``args``, an int64 array of integers and addresses) and the
    blocks its outputs land in; :meth:`result` reads them once the kernel has run. The arrays the
    kernel reads are held here until then. ``found`` (set by ``kiln_decode_step``'s caller; ``None``
    otherwise): the finished hypotheses offered by the steps before the last, ``found[0]`` records of
    4 + W1 int64 after it (sentence, length, raw and normalized score as double bits, the prefix)."""

    __slots__ = (
        "args",
        "second",
        "found",
        "beams",
        "held",
        "ints",
        "reals",
        "scores",
        "flags",
        "room",
        "offsets",
    )

    def result(self, total: int, which: int = 0, steps: int = 1) -> StepResult:
        """The outcome after ``steps`` steps (more than one: ``kiln_decode_step``'s, alternating between
        ``args`` and ``second``, the last by ``which``), the last keeping ``total`` rows."""
        beams, ints, reals, flags = self.beams, self.ints, self.reals, self.flags
        n, room = beams.sentences, self.room
        o_origin, _, o_prefixes, o_failed, width_b = self.offsets
        width1 = int(beams.prefixes.shape[1])
        rows, worst = ints[:n], reals[:n]
        norms = reals[n : n * (1 + width_b)].reshape(n, width_b)
        failed = flags[o_failed : o_failed + n].view(np.bool_)
        outputs = (ints, self.scores) if which == 0 else self.second[1:]  # origin, tokens, prefixes; scores
        origin = outputs[0][o_origin : o_origin + total]
        tokens = outputs[0][o_origin + room : o_origin + room + total]
        prefixes, scores = outputs[0][o_prefixes:].reshape(room, width1), outputs[1]
        if steps == 1:  # the prefixes the last step extended
            extended = beams.prefixes
        else:
            extended = (ints if which == 1 else self.second[1])[o_prefixes:].reshape(room, width1)
        offered = self._offered(extended, width1)
        finished = beams.finished
        if offered:
            finished, changed, beam = list(finished), {}, beams.beam.tolist()
            for s, hypothesis in offered:
                kept = changed.get(s)
                if kept is None:
                    kept = changed[s] = list(finished[s])
                keep_best(kept, hypothesis, beam[s])
            for s, kept in changed.items():
                finished[s] = tuple(kept)
            finished = tuple(finished)
        new = evolve(  # what a step changes, as the numpy step's result
            beams,
            step=beams.step + steps * (beams.rows > 0),  # the live sentences' next token
            rows=rows,
            failed=failed,
            worst=worst,
            scores=scores[:total],
            prefixes=prefixes[:total],
            finished=finished,
            finished_norms=norms,
        )
        return StepResult(new, origin[:total], tokens[:total])

    def _offered(self, extended: np.ndarray, width1: int) -> list[tuple[int, Hypothesis]]:
        """The finished hypotheses the steps offered, in the order they offered them, each with its
        sentence: the records of the steps before the last (``found``), then the last step's offers,
        whose prefixes are rows of ``extended`` (the prefixes that step extended)."""
        beams, ints, reals = self.beams, self.ints, self.reals
        n, room = beams.sentences, self.room
        _, o_offers, o_prefixes, _, width_b = self.offsets
        offered: list[tuple[int, Hypothesis]] = []
        found = self.found
        if found is not None and found[0]:  # the steps before the last (kiln_decode_step)
            records = found[1 : 1 + int(found[0]) * (4 + width1)].reshape(-1, 4 + width1)
            heads = records[:, :2].tolist()  # sentence, length (EOS included)
            reals_of = records[:, 2:4].copy().view(np.float64).tolist()  # raw and normalized score
            # the prefixes after BOS up to the longest offer only (rows are as wide as max_length: their
            # conversion to lists was a third of this function's time)
            prefixes = records[:, 5 : 4 + int(records[:, 1].max())].tolist()
            eos = beams.eos_id
            for (sentence, length), (score, norm), generated in zip(heads, reals_of, prefixes, strict=True):
                del generated[length - 1 :]
                generated.append(eos)  # the prefix after BOS, then EOS
                offered.append((sentence, Hypothesis(generated, score, norm)))
        n_offers = int(ints[o_prefixes - 1])
        if n_offers:
            offer_sentence, offer_origin, offer_length = (
                ints[o_offers + j * room : o_offers + j * room + n_offers].tolist() for j in range(3)
            )
            start = n * (1 + width_b)
            offer_score = reals[start : start + n_offers].tolist()
            offer_norm = reals[start + room : start + room + n_offers].tolist()
            # one gather for every offer's prefix, up to the longest (rows are as wide as max_length)
            extended_rows = extended[offer_origin, : max(offer_length)].tolist()
            for i in range(n_offers):
                generated = extended_rows[i][1 : offer_length[i]] + [beams.eos_id]
                offered.append((offer_sentence[i], Hypothesis(generated, offer_score[i], offer_norm[i])))
        return offered


def pack(
    beams: Beams, log_probs: np.ndarray, row_index: np.ndarray | None = None, second: bool = False
) -> PackedStep:
    """The kernel's arguments for a step over ``log_probs`` (float32 ``[rows, V]``, C-contiguous: the
    kernel reads it at its address when it runs, so a buffer still to be written may be passed). With
    ``second``, also ``second``: the same arguments with other outputs (kept rows' origin, tokens,
    scores and prefixes), for steps that alternate (``kiln_decode_step``). ``log_probs`` is refused as
    :func:`~serving.decoding.beam_search.check_log_probs` refuses it: the kernel reads each row's
    ``eos_id`` column and the rows ``row_index`` names unchecked (a spec whose ``eos_id`` is not below
    its ``vocab_size`` read past each row in ``kiln_decode_step``, where the numpy step refused it)."""
    check_log_probs(beams, log_probs, row_index)
    n, vocab, width1 = beams.sentences, int(log_probs.shape[1]), int(beams.prefixes.shape[1])
    if beams.divisors.shape[1] != width1:  # the kernel indexes both with one width
        raise ValueError(f"divisors width {beams.divisors.shape[1]} != prefixes width {width1}")
    live = beams.rows > 0
    if live.all():  # the usual case: the batch retires finished sentences after each step
        k, room = 2 * int(beams.beam.max()), int(beams.beam.sum())  # candidates, rows kept at most
    else:
        live_beams = beams.beam[live]
        k, room = 2 * int(live_beams.max()), int(live_beams.sum())
    if k > 2 * native.MAX_BEAM:  # the kernel's per-sentence scratch: a wider beam overran its stack
        raise ValueError(f"a beam of {k // 2} is wider than the compiled step takes ({native.MAX_BEAM})")
    width_b = beams.finished_norms.shape[1]
    # the kernel's outputs and scratch in four blocks, each one allocation and one address
    ints = np.empty(3 * n + (5 + width1) * room + 1, np.int64)  # see the offsets below
    reals = np.empty(n * (1 + width_b) + 2 * room)  # worst [n], norms [n, B], offer score and norm
    scores = np.empty(room, np.float32)
    flags = np.empty(n * k * TOP_BYTES + 2 * n, np.uint8)  # candidates (at 0: aligned), failed, NaN
    o_origin, o_offers, o_prefixes = 3 * n, 3 * n + 2 * room, 3 * n + 5 * room + 1
    o_failed = n * k * TOP_BYTES
    ints[:n], worst = beams.rows, reals[:n]
    norms = reals[n : n * (1 + width_b)].reshape(n, width_b)
    flags[o_failed : o_failed + n].view(np.bool_)[:] = beams.failed
    worst[:], norms[:] = beams.worst, beams.finished_norms
    log_probs = np.ascontiguousarray(log_probs, dtype=np.float32)  # held: the kernel reads its address
    index = None if row_index is None else np.ascontiguousarray(row_index, dtype=np.int64)
    inputs = (beams.scores, beams.prefixes, beams.beam, beams.min_length, beams.max_length, beams.divisors)
    inputs = tuple(map(np.ascontiguousarray, (*inputs, beams.step)))  # held while the kernel reads them
    a_int, a_real, a_flag = address(ints), address(reals), address(flags)
    packed = PackedStep()
    packed.args = np.array(
        [
            n,
            vocab,
            beams.eos_id,
            k,
            width1,
            width_b,
            address(log_probs),
            vocab,
            0 if index is None else address(index),
            *map(address, inputs),
            a_int,  # rows
            a_flag + o_failed,  # failed
            a_real,  # worst
            a_real + 8 * n,  # norms
            a_int + 8 * n,  # counts (computed by the kernel)
            a_int + 8 * o_origin,  # origin
            a_int + 8 * (o_origin + room),  # tokens
            address(scores),
            a_int + 8 * o_prefixes,  # prefixes
            a_int + 8 * o_offers,  # offer sentence, origin, length
            a_int + 8 * (o_offers + room),
            a_int + 8 * (o_offers + 2 * room),
            a_real + 8 * n * (1 + width_b),  # offer score, norm
            a_real + 8 * (n * (1 + width_b) + room),
            a_int + 8 * (o_prefixes - 1),  # the number of offers
            a_flag,  # scratch: the candidates, their counts, NaN flags
            a_int + 16 * n,
            a_flag + o_failed + n,
        ],
        dtype=np.int64,
    )
    packed.found = None  # set by kiln_decode_step's caller (see result)
    packed.second = _second(packed.args, ints, scores, o_origin, o_prefixes, room) if second else None
    packed.beams, packed.held = beams, (log_probs, index, inputs)
    packed.ints, packed.reals, packed.scores, packed.flags, packed.room = ints, reals, scores, flags, room
    packed.offsets = (o_origin, o_offers, o_prefixes, o_failed, width_b)
    return packed


def _second(
    args: np.ndarray, ints: np.ndarray, scores: np.ndarray, o_origin: int, o_prefixes: int, room: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The arguments of a step that alternates with ``args``: the same, with the kept rows' origin,
    tokens, scores and prefixes written to blocks of their own (returned with them)."""
    ints2, scores2 = np.empty_like(ints), np.empty_like(scores)
    args2 = args.copy()
    a_int2 = address(ints2)
    args2[21:25] = (a_int2 + 8 * o_origin, a_int2 + 8 * (o_origin + room), address(scores2), 0)
    args2[24] = a_int2 + 8 * o_prefixes  # origin, tokens, scores, prefixes
    return args2, ints2, scores2
