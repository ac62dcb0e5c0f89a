"""Beam search over an injected decoder step, in numpy (serving never imports torch).

fairseq mechanics as fixed by docs/translator-interface.md: per sentence ``beam`` live rows (one at step
0), the best ``2 * beam`` candidates by a stable sort (ties: lower flat index first), EOS candidates among
the first ``beam`` ranks finalized, the first ``beam`` non-EOS candidates continue, EOS blocked before
``min_length`` and forced at ``max_length - 1``. Stopping follows Hugging Face's non-early-stopping rule:
a sentence keeps its best ``beam`` finished hypotheses and is done once it has ``beam`` of them and its
best live row, normalized at the current length, is not better than the worst kept one. The state is
per sentence so that an iteration-level scheduler can mix the rows of sentences from different requests
in one decoder call and let sentences join and leave between steps; :func:`advance_batch` and
:func:`beam_search` do that mixing.

Step function contract (:data:`StepFn`): ``step(tokens: int64[rows], origin: int64[rows])`` first
reorders the decoder's state rows by ``origin`` (indices into the rows of the previous call; at step 0,
into the one initial row per sentence), then runs one step on ``tokens`` and returns float32 log-probs
``[rows, V]``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

LENGTH_PENALTIES = ("none", "average", "gnmt")

StepFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class BeamConfig:
    """Decoding settings; invalid combinations are refused with a message naming the field."""

    beam_size: int = 4
    n_best: int = 1
    max_length: int = 128
    min_length: int = 0
    length_penalty: str = "average"
    alpha: float = 1.0
    eos_id: int = 2
    bos_id: int = 1

    def __post_init__(self) -> None:
        _check_int("beam_size", self.beam_size, 1)
        _check_int("n_best", self.n_best, 1)
        _check_int("max_length", self.max_length, 1)
        _check_int("min_length", self.min_length, 0)
        _check_int("eos_id", self.eos_id, 0)
        _check_int("bos_id", self.bos_id, 0)
        if self.n_best > self.beam_size:
            raise ValueError(f"n_best={self.n_best} must be <= beam_size={self.beam_size}")
        if self.min_length >= self.max_length:
            raise ValueError(f"min_length={self.min_length} must be < max_length={self.max_length}")
        if self.length_penalty not in LENGTH_PENALTIES:
            raise ValueError(f"length_penalty={self.length_penalty!r}; expected one of {LENGTH_PENALTIES}")
        if not isinstance(self.alpha, int | float) or not math.isfinite(self.alpha) or self.alpha < 0:
            raise ValueError(f"alpha={self.alpha!r} must be a finite number >= 0")
        if self.eos_id == self.bos_id:
            raise ValueError(f"eos_id and bos_id must differ (both {self.eos_id})")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


@dataclass(frozen=True)
class Hypothesis:
    """One finished translation: generated ids (EOS included, no BOS), raw and normalized score."""

    tokens: list[int]
    score: float
    normalized_score: float


def output_tokens(tokens: list[int], *, eos_id: int, pad_id: int, bos_id: int) -> list[int]:
    """The ids to detokenize from a hypothesis: up to its first EOS, without BOS and padding."""
    if eos_id in tokens:
        tokens = tokens[: tokens.index(eos_id)]
    return [t for t in tokens if t not in (pad_id, bos_id)]


def normalize_score(score: float, length: int, penalty: str, alpha: float) -> float:
    """Length-normalized score; ``length`` counts the generated tokens including EOS."""
    if penalty == "average":
        return score / length**alpha
    if penalty == "gnmt":
        return score / ((5 + length) / 6) ** alpha
    return score


@dataclass(frozen=True)
class BeamState:
    """One sentence's search: live prefixes (BOS first), their cumulative scores, the best ``beam``
    finished hypotheses (best normalized score first; ties: finished first)."""

    config: BeamConfig
    step: int  # index of the token the next advance() chooses (0 = first token after BOS)
    prefixes: np.ndarray  # int64 [rows, step + 1]
    scores: np.ndarray  # float32 [rows]
    finalized: tuple[Hypothesis, ...] = ()
    done: bool = False


def start(config: BeamConfig) -> BeamState:
    """A fresh sentence: one live row holding BOS with score 0."""
    return BeamState(
        config=config,
        step=0,
        prefixes=np.full((1, 1), config.bos_id, dtype=np.int64),
        scores=np.zeros(1, dtype=np.float32),
    )


def live_rows(state: BeamState) -> int:
    """How many decoder rows this sentence needs in the next step (0 once done)."""
    return 0 if state.done else int(state.prefixes.shape[0])


def is_done(state: BeamState) -> bool:
    return state.done


def mask_log_probs(log_probs: np.ndarray, step: int, config: BeamConfig) -> np.ndarray:
    """Block EOS before ``min_length``; allow only EOS at the last step (copy, float32)."""
    lp = np.array(log_probs, dtype=np.float32, copy=True)  # [rows, V]
    if step < config.min_length:
        lp[:, config.eos_id] = -np.inf
    if step >= config.max_length - 1:
        eos_column = lp[:, config.eos_id].copy()
        lp[:] = -np.inf
        lp[:, config.eos_id] = eos_column
    return lp


def top_candidates(scores: np.ndarray, log_probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` flat indices over ``[rows, V]`` and their scores, stable (lower index wins ties)."""
    cand = (scores[:, None] + log_probs).reshape(-1)  # [rows * V] float32
    pool = np.arange(cand.size)  # [rows * V]
    if cand.size > 4 * k:  # pre-select with a partition (O(n)); keep every tie of the k-th value
        kth = np.partition(cand, cand.size - k)[cand.size - k]
        pool = np.flatnonzero(
            cand >= kth
        )  # ascending flat indices, so the stable sort still sees them in order
    order = pool[np.argsort(-cand[pool], kind="stable")][:k]  # [k]
    return order, cand[order]


def advance(state: BeamState, log_probs: np.ndarray) -> tuple[BeamState, np.ndarray, np.ndarray]:
    """One search step for one sentence.

    Returns the new state, ``origin`` (int64, index of each new live row's parent among this sentence's
    current rows) and ``next_tokens`` (int64, the token each new row feeds to the next decoder step);
    both are empty once the sentence is done.
    """
    cfg = state.config
    rows = live_rows(state)
    if state.done:
        raise ValueError("advance() called on a finished sentence")
    if log_probs.ndim != 2 or log_probs.shape[0] != rows or log_probs.shape[1] <= cfg.eos_id:
        raise ValueError(f"log_probs must be [{rows}, V > eos_id={cfg.eos_id}], got {log_probs.shape}")
    vocab = log_probs.shape[1]
    lp = mask_log_probs(log_probs, state.step, cfg)  # [rows, V]
    flat, cand = top_candidates(state.scores, lp, 2 * cfg.beam_size)  # [k], [k]
    origin, tokens = flat // vocab, flat % vocab  # [k], [k]
    finite = np.isfinite(cand)
    finalized = _finalize_eos(state, origin, tokens, cand, finite)
    keep = np.flatnonzero((tokens != cfg.eos_id) & finite)[: cfg.beam_size]  # ranks that continue
    done = (
        state.step >= cfg.max_length - 1
        or keep.size == 0
        or _cannot_improve(cfg, finalized, float(cand[keep[0]]), state.step + 1)
    )
    if done:
        keep = keep[:0]
    prefixes = np.concatenate([state.prefixes[origin[keep]], tokens[keep, None]], axis=1)
    new_state = dataclasses.replace(
        state,
        step=state.step + 1,
        prefixes=prefixes.astype(np.int64),  # [rows', step + 2]
        scores=cand[keep].astype(np.float32),  # [rows']
        finalized=finalized,
        done=done,
    )
    return new_state, origin[keep].astype(np.int64), tokens[keep].astype(np.int64)


def _finalize_eos(
    state: BeamState, origin: np.ndarray, tokens: np.ndarray, cand: np.ndarray, finite: np.ndarray
) -> tuple[Hypothesis, ...]:
    """Offer the EOS candidates ranked within the first ``beam``, in rank order, to the finished list."""
    cfg = state.config
    finished = list(state.finalized)
    length = state.step + 1  # generated tokens including this EOS
    for rank in range(min(cfg.beam_size, tokens.size)):
        if tokens[rank] != cfg.eos_id or not finite[rank]:
            continue
        generated = [int(t) for t in state.prefixes[origin[rank], 1:]] + [cfg.eos_id]
        score = float(cand[rank])
        norm = normalize_score(score, length, cfg.length_penalty, cfg.alpha)
        _keep_best(finished, Hypothesis(tokens=generated, score=score, normalized_score=norm), cfg.beam_size)
    return tuple(finished)


def _keep_best(finished: list[Hypothesis], hyp: Hypothesis, beam: int) -> None:
    """Insert ``hyp`` after every kept hypothesis at least as good, then drop all beyond the best ``beam``.

    So a newcomer not strictly better than the worst of a full list is dropped (ties: the earlier stays).
    """
    at = next((i for i, h in enumerate(finished) if h.normalized_score < hyp.normalized_score), len(finished))
    finished.insert(at, hyp)
    del finished[beam:]


def _cannot_improve(cfg: BeamConfig, finished: Sequence[Hypothesis], best_live: float, length: int) -> bool:
    """Whether the list is full and the best live row, normalized at ``length`` (tokens generated so far,
    without EOS), is not better than the worst kept hypothesis (Hugging Face's non-early-stopping rule)."""
    if len(finished) < cfg.beam_size:
        return False
    return normalize_score(best_live, length, cfg.length_penalty, cfg.alpha) <= finished[-1].normalized_score


def finalize(state: BeamState) -> list[Hypothesis]:
    """The ``n_best`` finished hypotheses, best normalized score first (ties: finished first)."""
    return list(state.finalized[: state.config.n_best])  # kept in that order by _keep_best


def advance_batch(
    states: Sequence[BeamState], log_probs: np.ndarray
) -> tuple[list[BeamState], np.ndarray, np.ndarray]:
    """Advance many sentences whose live rows were stacked in order in one decoder call.

    ``log_probs`` is ``[sum(live_rows), V]``; finished sentences own no rows. The returned ``origin``
    indexes rows of ``log_probs`` (i.e. of that decoder call), ready to be passed to the next step.
    """
    sizes = [live_rows(s) for s in states]
    if log_probs.shape[0] != sum(sizes):
        raise ValueError(f"log_probs has {log_probs.shape[0]} rows, the live sentences need {sum(sizes)}")
    new_states, origins, tokens = [], [], []
    offset = 0
    for state, size in zip(states, sizes, strict=True):
        if size == 0:
            new_states.append(state)
            continue
        state, origin, next_tokens = advance(state, log_probs[offset : offset + size])
        new_states.append(state)
        origins.append(origin + offset)
        tokens.append(next_tokens)
        offset += size
    empty = np.zeros(0, dtype=np.int64)
    origin_all = np.concatenate(origins) if origins else empty
    tokens_all = np.concatenate(tokens) if tokens else empty
    return new_states, origin_all, tokens_all


def beam_search(step: StepFn, n_sentences: int, config: BeamConfig) -> list[list[Hypothesis]]:
    """Decode ``n_sentences`` together, all live rows in each ``step`` call; greedy is ``beam_size=1``."""
    _check_int("n_sentences", n_sentences, 0)
    states = [start(config) for _ in range(n_sentences)]
    tokens = np.full(n_sentences, config.bos_id, dtype=np.int64)  # [rows]
    origin = np.arange(n_sentences, dtype=np.int64)  # [rows]: initial row i belongs to sentence i
    while tokens.size:
        log_probs = np.asarray(step(tokens, origin))  # [rows, V]
        states, origin, tokens = advance_batch(states, log_probs)
    return [finalize(s) for s in states]
