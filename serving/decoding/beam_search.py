"""Beam search for every sentence of a decoder step at once, as numpy array operations.

fairseq mechanics as fixed by docs/translator-interface.md: per sentence ``beam`` live rows (one at step
0), the best ``2 * beam`` candidates by a stable sort (ties: lower flat index first), EOS candidates among
the first ``beam`` ranks finalized, the first ``beam`` non-EOS candidates continue, EOS blocked before
``min_length`` and forced at ``max_length - 1``. Stopping follows Hugging Face's non-early-stopping rule:
a sentence keeps its best ``beam`` finished hypotheses and is done once it has ``beam`` of them and its
best live row, normalized at the current length, is not better than the worst kept one.

:class:`Beams` holds the searches of many sentences (per-sentence arrays, and per-row arrays with each
sentence's live rows contiguous); :func:`step` advances all of them over one ``[rows, V]`` decoder output,
with per-sentence beam sizes, lengths and options handled by masks, so the Python work of a step does not
grow with the number of sentences (only with the EOS candidates that get finalized). Sentences join
(:func:`concat`) and leave (:func:`remove`) between steps. A sentence whose log-probs hold NaN fails alone
(``Beams.failed``); the others carry on.

Step function contract (:data:`StepFn`, used by :func:`beam_search`): ``step(tokens: int64[rows],
origin: int64[rows])`` first reorders the decoder's state rows by ``origin`` (indices into the rows of the
previous call; at step 0, into the one initial row per sentence), then runs one step on ``tokens`` and
returns float32 log-probs ``[rows, V]``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from serving.decoding.options import (  # the search's settings and results
    DEFAULTS,
    LENGTH_PENALTIES,
    LIMITS,
    BeamConfig,
    DecodingLimits,
    DecodingOptions,
    Hypothesis,
    _check_int,
    _divisors,
    check_options,
    config_for,
    normalize_score,
    output_tokens,
)

__all__ = [  # the search, and the settings and results it is used with (serving.decoding.options)
    "DEFAULTS",
    "LENGTH_PENALTIES",
    "LIMITS",
    "BeamConfig",
    "Beams",
    "DecodingLimits",
    "DecodingOptions",
    "Hypothesis",
    "StepFn",
    "StepResult",
    "beam_search",
    "check_log_probs",
    "check_options",
    "concat",
    "config_for",
    "evolve",
    "keep_best",
    "mask_candidates",
    "normalize_score",
    "output_tokens",
    "remove",
    "results",
    "start",
    "step",
    "top_candidates",
]

StepFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Beams:
    """The searches of ``S`` sentences; rows ``[R]`` hold each live sentence's rows contiguously, in order."""

    beam: np.ndarray  # int64 [S]
    n_best: np.ndarray  # int64 [S]
    min_length: np.ndarray  # int64 [S]
    max_length: np.ndarray  # int64 [S]
    divisors: np.ndarray  # float64 [S, W + 1]: length-penalty divisor by hypothesis length
    step: np.ndarray  # int64 [S]: index of the token the next step chooses (0 = first after BOS)
    rows: np.ndarray  # int64 [S]: live rows (0 once done or failed)
    failed: np.ndarray  # bool [S]: its log-probs were not numbers (NaN)
    scores: np.ndarray  # float32 [R]: cumulative log-prob of each live row
    prefixes: np.ndarray  # int64 [R, W + 1]: BOS, then the chosen tokens (0 after column step)
    finished: tuple[tuple[Hypothesis, ...], ...]  # per sentence, best normalized first (ties: earlier)
    worst: np.ndarray  # float64 [S]: normalized score of the beam-th finished (-inf until beam finished)
    finished_norms: np.ndarray  # float64 [S, max beam]: normalized scores of ``finished``, -inf padded
    eos_id: int
    bos_id: int

    @property
    def sentences(self) -> int:
        return int(self.beam.shape[0])

    @property
    def done(self) -> np.ndarray:
        """bool [S]: sentences with no live row (finished or failed)."""
        return self.rows == 0


_FIELDS = frozenset(f.name for f in dataclasses.fields(Beams))
# the fields indexed by sentence (the others: per row, or the ids)
_PER_SENTENCE = tuple(sorted(_FIELDS - {"scores", "prefixes", "eos_id", "bos_id", "finished"}))
# the arrays concat() joins as they are (the others are widened first)
_STACKED = tuple(sorted(_FIELDS - {"prefixes", "divisors", "finished_norms", "finished", "eos_id", "bos_id"}))


def evolve(beams: Beams, **changes: object) -> Beams:
    """``dataclasses.replace(beams, **changes)`` without its walk over the fields and ``__init__`` (a step
    makes one a step: ~25 -> ~3 us); ``Beams`` has no checks in ``__init__`` to skip."""
    unknown = changes.keys() - _FIELDS
    if unknown:
        raise TypeError(f"Beams has no fields {sorted(unknown)}")
    new = object.__new__(Beams)
    new.__dict__.update(beams.__dict__)
    new.__dict__.update(changes)
    return new


def start(configs: Sequence[BeamConfig]) -> Beams:
    """Fresh searches: one live row per sentence holding BOS with score 0 (configs share eos/bos ids)."""
    if not configs:
        raise ValueError("start() needs at least one BeamConfig")
    eos, bos = configs[0].eos_id, configs[0].bos_id
    if any((c.eos_id, c.bos_id) != (eos, bos) for c in configs):
        raise ValueError("sentences decoded together must share eos_id and bos_id")
    n, width = len(configs), max(c.max_length for c in configs)
    prefixes = np.zeros((n, width + 1), dtype=np.int64)
    prefixes[:, 0] = bos
    return Beams(
        beam=np.array([c.beam_size for c in configs], dtype=np.int64),
        n_best=np.array([c.n_best for c in configs], dtype=np.int64),
        min_length=np.array([c.min_length for c in configs], dtype=np.int64),
        max_length=np.array([c.max_length for c in configs], dtype=np.int64),
        divisors=np.stack([_divisors(c.length_penalty, float(c.alpha), width) for c in configs]),
        step=np.zeros(n, dtype=np.int64),
        rows=np.ones(n, dtype=np.int64),
        failed=np.zeros(n, dtype=bool),
        scores=np.zeros(n, dtype=np.float32),
        prefixes=prefixes,
        finished=((),) * n,
        worst=np.full(n, -np.inf),
        finished_norms=np.full((n, max(c.beam_size for c in configs)), -np.inf),
        eos_id=eos,
        bos_id=bos,
    )


def _widen(array: np.ndarray, width: int, fill: float = 0) -> np.ndarray:
    """Pad axis 1 with ``fill`` up to ``width`` (zeros are never read: beyond every max_length)."""
    pad = ((0, 0), (0, width - array.shape[1]))
    return np.pad(array, pad, constant_values=fill) if array.shape[1] < width else array


def concat(first: Beams, second: Beams) -> Beams:
    """Sentences of ``second`` after those of ``first`` (their rows after ``first``'s rows)."""
    if (first.eos_id, first.bos_id) != (second.eos_id, second.bos_id):
        raise ValueError("sentences decoded together must share eos_id and bos_id")
    width = max(first.prefixes.shape[1], second.prefixes.shape[1])
    kept = max(first.finished_norms.shape[1], second.finished_norms.shape[1])
    fields = {name: np.concatenate([getattr(first, name), getattr(second, name)]) for name in _STACKED}
    for name in ("prefixes", "divisors"):
        fields[name] = np.concatenate(
            [_widen(getattr(first, name), width), _widen(getattr(second, name), width)]
        )
    norms = (_widen(first.finished_norms, kept, -np.inf), _widen(second.finished_norms, kept, -np.inf))
    fields["finished_norms"] = np.concatenate(norms)
    return evolve(first, **fields, finished=first.finished + second.finished)


def remove(beams: Beams, leaving: np.ndarray) -> tuple[Beams, np.ndarray]:
    """Drop the sentences flagged in ``leaving`` (bool [S]) and their rows.

    Returns the smaller search and the indices of the rows that stay (to drop the same decoder rows).
    """
    stay = ~np.asarray(leaving, dtype=bool)  # [S]
    kept = np.flatnonzero(stay)  # [S']
    fields = {name: getattr(beams, name)[kept] for name in _PER_SENTENCE}
    finished = beams.finished
    fields["finished"] = tuple(finished[i] for i in kept.tolist())
    if stay[beams.rows > 0].all():  # e.g. sentences retired after a step: no row leaves
        return evolve(beams, **fields), np.arange(beams.scores.shape[0])
    row_stay = np.flatnonzero(np.repeat(stay, beams.rows))  # [R']
    return evolve(beams, **fields, scores=beams.scores[row_stay], prefixes=beams.prefixes[row_stay]), row_stay


def results(beams: Beams, sentence: int) -> list[Hypothesis]:
    """The ``n_best`` finished hypotheses of one sentence, best normalized score first."""
    return list(beams.finished[sentence][: beams.n_best[sentence]])


def mask_candidates(
    cand: np.ndarray,
    rows: np.ndarray,
    step: np.ndarray,
    min_length: np.ndarray,
    max_length: np.ndarray,
    eos_id: int,
) -> None:
    """In place over ``cand`` ``[R, V]`` (``rows[i]`` rows per sentence ``i``): EOS blocked while
    ``step < min_length``; only EOS allowed at ``max_length - 1``. Per-sentence tests, so a step with
    no sentence at either bound touches no row."""
    early, last = step < min_length, step >= max_length - 1  # [n]
    if early.any():
        cand[np.repeat(early, rows), eos_id] = -np.inf
    if last.any():
        last = np.repeat(last, rows)  # [R]
        eos_column = cand[last, eos_id]
        cand[last] = -np.inf
        cand[last, eos_id] = eos_column


def top_candidates(cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``cand`` ``[S, N]``: the best ``k`` finite column indices and values by a stable
    descending sort (ties: lower index first), padded with ``-inf`` at index ``N`` where a row has fewer.

    Exact without sorting whole rows: every candidate at or above a threshold no higher than the
    ``k``-th best (so that value and all its ties) is selected, and only those are sorted. The threshold
    is 8 nats below the row's best, widened a nat at a time up to 12 for rows where fewer than ``k``
    clear it, then the ``k``-th best itself (a partition of the rows still short). Non-finite candidates are never used by the search, so
    they are not selected.
    """
    n, width = cand.shape
    if width < k:  # e.g. step 0 over a vocabulary smaller than 2 * beam
        cand = np.concatenate([cand, np.full((n, k - width), -np.inf, dtype=cand.dtype)], axis=1)
        width = k
    floor = np.finfo(cand.dtype).min
    best = cand.max(axis=1)  # [S]
    threshold = np.maximum(best - 8, floor).astype(cand.dtype)  # [S]
    selected = cand >= threshold[:, None]  # [S, N]
    short = np.flatnonzero(selected.sum(axis=1) < k)
    for spread in (9, 10, 11, 12, None):  # widen for rows still short (tails are dense: a nat at a time)
        if not short.size:
            break
        if spread is None:
            limit = np.partition(cand[short], width - k, axis=1)[:, width - k]
        else:
            limit = best[short] - spread
        threshold[short] = np.maximum(limit, floor)
        selected[short] = cand[short] >= threshold[short, None]
        short = short[selected[short].sum(axis=1) < k]
    sent, col = np.divmod(np.flatnonzero(selected), width)  # ascending columns per row
    values = cand[sent, col]
    order = np.lexsort((col, -values, sent))  # by row, value descending, then lower column
    counts = np.bincount(sent, minlength=n)  # [S]
    starts = np.cumsum(counts) - counts  # [S]
    rank = np.arange(k)
    present = rank < counts[:, None]  # [S, k]
    picked = order[np.where(present, starts[:, None] + rank, 0)] if order.size else np.zeros((n, k), np.int64)
    index = np.where(present, col[picked] if col.size else width, width)
    return index, np.where(present, values[picked] if values.size else -np.inf, -np.inf).astype(cand.dtype)


@dataclass(frozen=True)
class StepResult:
    """After one step: the search, and the next decoder call's ``origin`` / ``tokens`` (int64 [rows'])."""

    beams: Beams
    origin: np.ndarray  # index of each new row's parent among the rows of the call just made
    tokens: np.ndarray  # the token each new row feeds to the next call


def check_log_probs(beams: Beams, log_probs: np.ndarray, row_index: np.ndarray | None = None) -> None:
    """Refuse a decoder output that is not ``[live rows, V > eos_id]`` (read through ``row_index``,
    one index per live row: ``[rows beyond every index, V > eos_id]``)."""
    rows_total = int(beams.scores.shape[0])
    if row_index is None:
        rows_ok = log_probs.ndim == 2 and log_probs.shape[0] == rows_total
    else:
        rows_ok = log_probs.ndim == 2 and row_index.shape == (rows_total,)
        rows_ok = rows_ok and (not rows_total or 0 <= row_index.min() <= row_index.max() < log_probs.shape[0])
    if not rows_ok or log_probs.shape[1] <= beams.eos_id:
        raise ValueError(
            f"log_probs must be [{rows_total}, V > eos_id={beams.eos_id}]"
            f"{'' if row_index is None else ' read through a row index'}, got {log_probs.shape}"
        )


def step(beams: Beams, log_probs: np.ndarray) -> StepResult:
    """Advance every live sentence over one decoder call's ``log_probs`` ``[R, V]`` (rows as in ``beams``).

    The definition, as numpy array operations; :mod:`serving.decoding.compiled_step` runs the same
    decisions compiled and is tested against it."""
    check_log_probs(beams, log_probs)
    live = np.flatnonzero(beams.rows)  # [n] sentences with rows, in row order
    cand, failed = _scored(beams, log_probs, live)
    rows = beams.rows[live]  # [n]
    vocab, width = cand.shape[1], int(rows.max())
    starts = np.cumsum(rows) - rows  # [n] first row of each live sentence
    if not (rows == width).all():  # pad sentences with fewer rows to [n, width, V] with -inf
        grid = np.full((live.size, width, vocab), -np.inf, dtype=np.float32)
        grid[np.repeat(np.arange(live.size), rows), np.arange(cand.shape[0]) - np.repeat(starts, rows)] = cand
        cand = grid
    beam = beams.beam[live][:, None]  # [n, 1]
    flat, top = top_candidates(cand.reshape(live.size, width * vocab), 2 * int(beam.max()))  # [n, k]
    origin, tokens = starts[:, None] + flat // vocab, flat % vocab  # [n, k] rows of this call, tokens
    rank, finite, is_eos = np.arange(top.shape[1]), np.isfinite(top), tokens == beams.eos_id
    cont = ~is_eos & finite & (rank < 2 * beam)
    keep = cont & (np.cumsum(cont, axis=1) <= beam)  # [n, k] the first `beam` continuing ranks
    finished, worst, norms = _finalize(beams, live, is_eos & finite & (rank < beam), top, origin, failed)
    best = top[np.arange(live.size), np.argmax(keep, axis=1)].astype(np.float64)  # [n] best live score
    length = beams.step[live] + 1  # tokens generated so far, without EOS
    with np.errstate(invalid="ignore"):
        cannot_improve = best / beams.divisors[live, length] <= worst[live]
    done = (length >= beams.max_length[live]) | ~keep.any(axis=1) | cannot_improve | failed[live]
    keep &= ~done[:, None]
    picked = np.nonzero(keep)  # sentence-major, rank order
    new_origin, new_tokens = origin[picked], tokens[picked]
    new_rows = beams.rows.copy()
    new_rows[live] = keep.sum(axis=1)
    prefixes = beams.prefixes[new_origin]  # [R', W + 1]
    prefixes[np.arange(new_origin.size), np.repeat(length, new_rows[live])] = new_tokens
    new = evolve(
        beams,
        step=np.where(beams.rows > 0, beams.step + 1, beams.step),
        rows=new_rows,
        failed=failed,
        scores=top[picked],
        prefixes=prefixes,
        finished=finished,
        worst=worst,
        finished_norms=norms,
    )
    return StepResult(new, new_origin.astype(np.int64), new_tokens.astype(np.int64))


def _scored(beams: Beams, log_probs: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's candidates ``[R, V]`` (its score plus each token's log-prob, float32, a new array),
    masked by the length and EOS rules, and the sentences failed after them (``[S]``): a row with a
    NaN fails its own sentence only, whose candidates all become -inf."""
    rows = beams.rows[live]  # [n]
    cand = beams.scores[:, None] + np.asarray(log_probs, dtype=np.float32)
    mask_candidates(
        cand, rows, beams.step[live], beams.min_length[live], beams.max_length[live], beams.eos_id
    )
    failed = beams.failed.copy()  # [S] (_finalize may add to it)
    bad_rows = np.isnan(cand).any(axis=1)  # [R]
    if bad_rows.any():
        row_sentence = np.repeat(live, rows)  # [R]
        failed[row_sentence[bad_rows]] = True
        cand[failed[row_sentence]] = -np.inf
    return cand, failed


def _finalize(
    beams: Beams, live: np.ndarray, eos: np.ndarray, top: np.ndarray, origin: np.ndarray, failed: np.ndarray
) -> tuple[tuple[tuple[Hypothesis, ...], ...], np.ndarray, np.ndarray]:
    """Offer the EOS candidates ranked within each sentence's first ``beam``, in rank order, to its list."""
    finished, worst, norms = list(beams.finished), beams.worst.copy(), beams.finished_norms
    lists: dict[int, list[Hypothesis]] = {}
    for i, r in zip(*np.nonzero(eos), strict=True):  # only the EOS candidates: few per step
        s = int(live[i])
        length = int(beams.step[s]) + 1  # generated tokens including this EOS
        generated = beams.prefixes[origin[i, r], 1:length].tolist() + [beams.eos_id]
        score = float(top[i, r])
        norm = score / float(beams.divisors[s, length])
        if not math.isfinite(norm):  # unreachable with a valid BeamConfig; guards the batch anyway
            failed[s] = True
            continue
        keep_best(
            lists.setdefault(s, list(finished[s])), Hypothesis(generated, score, norm), int(beams.beam[s])
        )
    if lists:
        norms = norms.copy()
    for s, kept in lists.items():
        finished[s] = tuple(kept)
        worst[s] = kept[-1].normalized_score if len(kept) == beams.beam[s] else -np.inf
        norms[s] = -np.inf
        norms[s, : len(kept)] = [h.normalized_score for h in kept]
    return tuple(finished), worst, norms


def keep_best(finished: list[Hypothesis], hyp: Hypothesis, beam: int) -> None:
    """Insert ``hyp`` after every kept hypothesis at least as good, then drop all beyond the best ``beam``.

    So a newcomer not strictly better than the worst of a full list is dropped (ties: the earlier stays).
    """
    score = hyp.normalized_score
    for at, kept in enumerate(finished):
        if kept.normalized_score < score:
            finished.insert(at, hyp)
            break
    else:
        finished.append(hyp)
    del finished[beam:]


def beam_search(step_fn: StepFn, n_sentences: int, config: BeamConfig) -> list[list[Hypothesis]]:
    """Decode ``n_sentences`` together, all live rows in each ``step_fn`` call; greedy is ``beam_size=1``."""
    _check_int("n_sentences", n_sentences, 0)
    if n_sentences == 0:
        return []
    beams = start([config] * n_sentences)
    tokens = np.full(n_sentences, config.bos_id, dtype=np.int64)  # [rows]
    origin = np.arange(n_sentences, dtype=np.int64)  # [rows]: initial row i belongs to sentence i
    while tokens.size:
        result = step(beams, np.asarray(step_fn(tokens, origin)))  # log-probs [rows, V]
        beams, origin, tokens = result.beams, result.origin, result.tokens
    if beams.failed.any():
        raise FloatingPointError(
            f"the decoder returned NaN log-probs for sentences {np.flatnonzero(beams.failed)}"
        )
    return [results(beams, i) for i in range(n_sentences)]
