"""The beam step compiled (``beam_step.c``), with the numpy step as its fallback and its definition.

:func:`step` is what the decode batch calls: the compiled kernel where it could be built
(:mod:`serving.decoding.native`), else :func:`serving.decoding.beam_search.step`. Both make the same
decisions on the same float32 / float64 arithmetic (``tests/test_native_step.py`` compares them bit for
bit on random searches); the compiled one does a step's work in one call instead of ~50 numpy calls
(measured: 420 -> 165 us per step at batch 32, beam 4; +11 % for the batch engine, +10 % through the
gateway). The kernel decides everything, including which finished hypotheses a sentence keeps; the
:class:`~serving.decoding.beam_search.Hypothesis` objects of the kept ones are made here, in its order,
by the rule it applied.
"""

from __future__ import annotations

import ctypes
import dataclasses

import numpy as np

from serving.decoding import native
from serving.decoding.beam_search import Beams, Hypothesis, StepResult, check_log_probs, keep_best
from serving.decoding.beam_search import step as numpy_step

TOP_BYTES = 16  # one candidate in the kernel's scratch: float32 value, padding, int64 flat index


def step(beams: Beams, log_probs: np.ndarray, row_index: np.ndarray | None = None) -> StepResult:
    """One step over ``log_probs`` ``[R, V]``, search row ``i`` reading row ``row_index[i]`` (default
    ``i``): compiled where available (and beams fit its scratch), else the numpy step."""
    check_log_probs(beams, log_probs, row_index)
    library = native.load()
    if library is None or not beams.scores.size or int(beams.beam.max()) > native.MAX_BEAM:
        return numpy_step(beams, log_probs if row_index is None else log_probs[row_index])
    return native_step(library, beams, log_probs, row_index)


def native_step(
    library: ctypes.CDLL, beams: Beams, log_probs: np.ndarray, row_index: np.ndarray | None = None
) -> StepResult:
    """:func:`step` by the kernel (see ``kiln_beam_step`` in ``beam_step.c`` for its arrays)."""
    n, vocab, width1 = beams.sentences, int(log_probs.shape[1]), int(beams.prefixes.shape[1])
    if beams.divisors.shape[1] != width1:  # the kernel indexes both with one width
        raise ValueError(f"divisors width {beams.divisors.shape[1]} != prefixes width {width1}")
    live = beams.rows > 0
    k, room = 2 * int(beams.beam[live].max()), int(beams.beam[live].sum())  # candidates, rows kept at most
    state = {"rows": beams.rows.copy(), "failed": beams.failed.copy(), "worst": beams.worst.copy()}
    state["norms"] = norms = np.array(beams.finished_norms, dtype=np.float64, order="C")
    state["counts"] = np.count_nonzero(norms > -np.inf, axis=1).astype(np.int64)
    out = {"origin": np.empty(room, np.int64), "tokens": np.empty(room, np.int64)}
    out["scores"], out["prefixes"] = np.empty(room, np.float32), np.empty((room, width1), np.int64)
    offers = {name: np.empty(room, np.int64) for name in ("sentence", "origin", "length")}
    offers["score"], offers["norm"], n_offers = np.empty(room), np.empty(room), np.zeros(1, np.int64)
    scratch = (np.empty(n * k * TOP_BYTES, np.uint8), np.empty(n, np.int64), np.empty(n, np.uint8))
    inputs = [np.ascontiguousarray(a) for a in (beams.scores, beams.prefixes, beams.beam, beams.min_length)]
    inputs += [np.ascontiguousarray(a) for a in (beams.max_length, beams.divisors, beams.step)]
    arrays = (*inputs, *state.values(), *out.values(), *offers.values(), n_offers, *scratch)
    log_probs = np.ascontiguousarray(log_probs, dtype=np.float32)  # held: the kernel reads its address
    index = None if row_index is None else np.ascontiguousarray(row_index, dtype=np.int64)
    total = library.kiln_beam_step(
        n,
        vocab,
        beams.eos_id,
        k,
        width1,
        norms.shape[1],
        log_probs.ctypes.data,
        vocab,
        None if index is None else index.ctypes.data,
        *(a.ctypes.data for a in arrays),
    )
    finished = list(beams.finished)
    for i in range(int(n_offers[0])):
        s, length = int(offers["sentence"][i]), int(offers["length"][i])
        tokens = beams.prefixes[offers["origin"][i], 1:length].tolist() + [beams.eos_id]
        kept = list(finished[s])
        keep_best(
            kept, Hypothesis(tokens, float(offers["score"][i]), float(offers["norm"][i])), int(beams.beam[s])
        )
        finished[s] = tuple(kept)
    new = dataclasses.replace(
        beams,
        step=np.where(live, beams.step + 1, beams.step),
        rows=state["rows"],
        failed=state["failed"],
        scores=out["scores"][:total],
        prefixes=out["prefixes"][:total],
        finished=tuple(finished),
        worst=state["worst"],
        finished_norms=norms,
    )
    return StepResult(new, out["origin"][:total], out["tokens"][:total])
