"""PyTorch reference decoding for translators: greedy, beam search and teacher-forced scoring.

The beam search follows docs/translator-interface.md token for token with ``serving.decoding.beam_search`` (the
numpy library the gateway runs), but is written with batched torch ops: every sentence keeps ``beam``
rows (rows that have no live candidate carry score -inf and are never finalized), each sentence keeps
its best ``beam`` finished hypotheses and leaves the batch once no live row can beat them (Hugging
Face's non-early-stopping rule). Decoder state is driven generically by the model's step spec (roles
``tokens``, ``positions``, ``encoder``, ``state``, ``cache``, ``cache_mask``), never by the model's name.
Kept independent of ``serving`` (training never imports the gateway), hence its own ``Hypothesis``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

LENGTH_PENALTIES = ("none", "average", "gnmt")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "bool": torch.bool}


class Hypothesis(NamedTuple):
    """One finished translation: generated ids (EOS included, no BOS), raw and normalized score."""

    tokens: list[int]
    score: float
    normalized_score: float


def normalize_score(score: float, length: int, penalty: str, alpha: float) -> float:
    """Length-normalized score; ``length`` counts the generated tokens including EOS. ``alpha`` as a
    float: an int's exact power (41**10) rounds otherwise than the float power the serving engine's
    divisors take, 1 ulp off its normalized scores for some lengths."""
    if penalty == "average":
        return score / length ** float(alpha)
    if penalty == "gnmt":
        return score / ((5 + length) / 6) ** float(alpha)
    return score


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Decode without dropout and without autograd, restoring the module's training flag after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _check_src(src_ids: Tensor) -> None:
    if not isinstance(src_ids, Tensor) or src_ids.dim() != 2 or src_ids.dtype != torch.long:
        raise ValueError(f"src_ids must be a LongTensor [B, S], got {getattr(src_ids, 'shape', src_ids)!r}")
    if src_ids.shape[0] == 0 or src_ids.shape[1] == 0:
        raise ValueError(f"src_ids must not be empty, got shape {tuple(src_ids.shape)}")


def _check_search(beam_size: int, n_best: int, max_length: int, min_length: int, penalty: str, alpha: float):
    for name, value, low in (
        ("beam_size", beam_size, 1),
        ("n_best", n_best, 1),
        ("max_length", max_length, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    if n_best > beam_size:
        raise ValueError(f"n_best={n_best} must be <= beam_size={beam_size}")
    if isinstance(min_length, bool) or not isinstance(min_length, int) or not 0 <= min_length < max_length:
        raise ValueError(f"min_length={min_length!r} must be an integer in [0, max_length={max_length})")
    if penalty not in LENGTH_PENALTIES:
        raise ValueError(f"length_penalty={penalty!r}; expected one of {LENGTH_PENALTIES}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha={alpha!r} must be a finite number >= 0")
    try:  # the divisor grows with the length: finite at max_length, finite at every step
        normalize_score(-1.0, max_length, penalty, alpha)
    except OverflowError:
        raise ValueError(f"alpha={alpha!r} overflows the length penalty at max_length={max_length}") from None


def _check_positions(
    spec: dict[str, Any], max_length: int, src_ids: Tensor, target: str = "max_length={}"
) -> None:
    """Neither the target nor the source may run past the model's position table (an IndexError there);
    ``target`` names the target's length in the message (a search's ``max_length``, or scored ids)."""
    limit = spec.get("max_positions")
    if limit is not None and max_length > limit:
        raise ValueError(f"{target.format(max_length)} exceeds the model's max_positions={limit}")
    if limit is not None and src_ids.shape[1] > limit:
        raise ValueError(
            f"src_ids has {src_ids.shape[1]} positions; the model takes at most max_positions={limit}"
        )


# --- decoder state driven by the step spec ----------------------------------------------------------


def init_state(
    spec: dict[str, Any],
    encoded: dict[str, Tensor],
    rows: int,
    *,
    past: int = 0,
    cache_fill: Callable[..., Tensor] = torch.zeros,
    past_valid: Tensor | None = None,
) -> dict[str, Tensor]:
    """Initial decoder state by role: encoder outputs, ``state`` inits, caches and the cache mask.

    Decoding starts with empty caches (``past=0``). Export's graph checks and the cache tests start
    with ``past`` entries already there: ``cache_fill(shape, dtype=, device=)`` makes them and
    ``past_valid`` (bool ``[rows, past]``, default all False = padding) says which ones attention sees.
    """
    device = next(iter(encoded.values())).device
    state: dict[str, Tensor] = {}
    for inp in spec["decoder"]["inputs"]:
        name, role = inp["name"], inp["role"]
        if role == "encoder":
            state[name] = encoded[name]
        elif role == "state":
            state[name] = encoded[inp["init"]]
        elif role == "cache":
            shape = [rows if d == -1 else d for d in inp["init_shape"]]
            shape[inp["axis"]] = past
            dtype = _DTYPES[spec.get("dtypes", {}).get(name, "float32")]
            state[name] = cache_fill(shape, dtype=dtype, device=device)
        elif role == "cache_mask":
            mask = torch.zeros(rows, past, dtype=torch.bool, device=device)
            state[name] = mask if past_valid is None else past_valid.to(device=device, dtype=torch.bool)
        elif role not in ("tokens", "positions", "row_place"):
            raise ValueError(f"decoder input {name!r} has unknown role {role!r}")
    return state


def decoder_inputs(spec: dict[str, Any], state: dict[str, Tensor], tokens: Tensor, step: int) -> dict:
    """The named inputs of one ``decode_step`` call: state plus this step's tokens and positions."""
    inputs = dict(state)
    for inp in spec["decoder"]["inputs"]:
        if inp["role"] == "tokens":
            inputs[inp["name"]] = tokens  # [rows]
        elif inp["role"] == "positions":
            inputs[inp["name"]] = torch.full_like(tokens, step)  # [rows]
        elif inp["role"] == "row_place":  # encoder inputs held per row: row r reads its own
            inputs[inp["name"]] = torch.arange(tokens.shape[0], device=tokens.device)  # [rows]
    return inputs


def update_state(spec: dict[str, Any], state: dict[str, Tensor], outputs: dict[str, Tensor]) -> dict:
    """Replace ``state`` inputs by their outputs, append ``cache`` entries and mark them valid."""
    new = dict(state)
    for inp in spec["decoder"]["inputs"]:
        name, role = inp["name"], inp["role"]
        if role == "state":
            new[name] = outputs[inp["output"]]
        elif role == "cache":
            new[name] = torch.cat([state[name], outputs[inp["output"]]], dim=inp["axis"])
        elif role == "cache_mask":
            valid = torch.ones(state[name].shape[0], 1, dtype=torch.bool, device=state[name].device)
            new[name] = torch.cat([state[name], valid], dim=1)  # [rows, past + 1]
    return new


def select_rows(state: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
    """Gather every state tensor's rows (axis 0) by beam origin."""
    return {name: value.index_select(0, index) for name, value in state.items()}


class _CachedSteps:
    """One ``decode_step`` per token over the spec-managed state (the exported graphs' path)."""

    def __init__(self, model: nn.Module, src_ids: Tensor) -> None:
        self.model, self.spec = model, model.step_spec()
        self.state = init_state(self.spec, model.encode(src_ids), src_ids.shape[0])

    def log_probs(self, tokens: Tensor, prefixes: Tensor, step: int) -> Tensor:
        outputs = self.model.decode_step(decoder_inputs(self.spec, self.state, tokens, step))
        self.state = update_state(self.spec, self.state, outputs)
        return outputs["log_probs"].float()  # [rows, V]

    def select(self, index: Tensor) -> None:
        self.state = select_rows(self.state, index)


class _FullSteps:
    """Recompute the whole decoder on the prefix each step (``use_cache=False``, the slow baseline)."""

    def __init__(self, model: nn.Module, src_ids: Tensor) -> None:
        self.model, self.src = model, src_ids

    def log_probs(self, tokens: Tensor, prefixes: Tensor, step: int) -> Tensor:
        logits = self.model(self.src, prefixes)  # [rows, step + 1, V]
        return torch.log_softmax(logits[:, -1].float(), dim=-1)  # [rows, V]

    def select(self, index: Tensor) -> None:
        self.src = self.src.index_select(0, index)


# --- greedy -------------------------------------------------------------------------------------------


def greedy_decode(model: nn.Module, src_ids: Tensor, max_length: int = 128, min_length: int = 0) -> list:
    """Argmax decoding (EOS blocked before ``min_length``, forced at ``max_length - 1``); ids end with EOS."""
    _check_src(src_ids)
    _check_search(1, 1, max_length, min_length, "none", 1.0)
    spec = model.step_spec()
    _check_positions(spec, max_length, src_ids)
    bos, eos = spec["bos_id"], spec["eos_id"]
    with _eval_mode(model):
        steps = _CachedSteps(model, src_ids)
        tokens = torch.full((src_ids.shape[0],), bos, dtype=torch.long, device=src_ids.device)  # [B]
        out = [[] for _ in range(src_ids.shape[0])]
        for step in range(max_length):
            lp = _mask(steps.log_probs(tokens, tokens[:, None], step), step, eos, min_length, max_length)
            tokens = lp.argmax(dim=-1)  # [B] first maximum on ties, like the stable sort
            for row, token in enumerate(tokens.tolist()):
                if not out[row] or out[row][-1] != eos:
                    out[row].append(token)
            if all(seq[-1] == eos for seq in out):
                break
    return out


def _mask(lp: Tensor, step: int, eos: int, min_length: int, max_length: int) -> Tensor:
    """Block EOS before ``min_length``; allow only EOS at the last step."""
    lp = lp.clone()  # [rows, V]
    if step < min_length:
        lp[:, eos] = -math.inf
    if step >= max_length - 1:
        eos_column = lp[:, eos].clone()
        lp.fill_(-math.inf)
        lp[:, eos] = eos_column
    return lp


# --- beam search --------------------------------------------------------------------------------------


def beam_search(
    model: nn.Module,
    src_ids: Tensor,
    beam_size: int = 4,
    n_best: int = 1,
    max_length: int = 128,
    min_length: int = 0,
    length_penalty: str = "average",
    alpha: float = 1.0,
    use_cache: bool = True,
) -> list[list[Hypothesis]]:
    """Batched beam search with the contract's semantics; ``use_cache=False`` reruns ``forward`` per step."""
    _check_src(src_ids)
    _check_search(beam_size, n_best, max_length, min_length, length_penalty, alpha)
    spec = model.step_spec()
    _check_positions(spec, max_length, src_ids)
    bos, eos, pad = spec["bos_id"], spec["eos_id"], spec["pad_id"]
    n, device = src_ids.shape[0], src_ids.device
    finished: list[list[Hypothesis]] = [[] for _ in range(n)]
    with _eval_mode(model):
        steps = _CachedSteps(model, src_ids) if use_cache else _FullSteps(model, src_ids)
        active = torch.arange(n, device=device)  # sentence id of each active sentence
        scores = torch.zeros(n, 1, device=device)  # [n_act, rows] one row per sentence at step 0
        prefixes = torch.full((n, 1, 1), bos, dtype=torch.long, device=device)  # [n_act, rows, step + 1]
        tokens = prefixes.view(-1)  # [n_act * rows]
        for step in range(max_length):
            n_act, rows = scores.shape
            lp = steps.log_probs(tokens, prefixes.view(n_act * rows, step + 1), step)
            lp = _mask(lp, step, eos, min_length, max_length)  # [n_act * rows, V]
            top, origin, tok = _top_candidates(scores, lp, 2 * beam_size)  # [n_act, 2 * beam] each
            penalty = (length_penalty, alpha)
            _finalize_eos(finished, active, prefixes, top, origin, tok, step, beam_size, eos, penalty)
            scores, origin, tok, alive = _continuing(top, origin, tok, beam_size, eos, pad)  # [n_act, beam]
            over = _cannot_improve(finished, active, scores[:, 0], step + 1, beam_size, penalty)  # [n_act]
            keep = (alive & ~over).nonzero().squeeze(1) if step < max_length - 1 else active[:0]
            if keep.numel() == 0:
                break
            history = prefixes.gather(1, origin[:, :, None].expand(-1, -1, step + 1))  # [n_act, beam, step+1]
            prefixes = torch.cat([history, tok[:, :, None]], dim=2)[keep]  # [n_act', beam, step + 2]
            parents = torch.arange(n_act, device=device)[:, None] * rows + origin  # [n_act, beam]
            steps.select(parents[keep].reshape(-1))
            scores, tokens, active = scores[keep], tok[keep].reshape(-1), active[keep]
    return [hyps[:n_best] for hyps in finished]  # kept best normalized score first by _keep_best


def _top_candidates(scores: Tensor, lp: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Best ``k`` of ``rows * V`` per sentence by a stable sort (lower flat index wins ties)."""
    n, rows = scores.shape
    vocab = lp.shape[1]
    cand = (scores[:, :, None] + lp.view(n, rows, vocab)).view(n, rows * vocab)  # [n, rows * V]
    if rows * vocab < k:  # tiny vocabulary at step 0: pad with impossible candidates
        cand = torch.cat([cand, cand.new_full((n, k - rows * vocab), -math.inf)], dim=1)
    top, order = torch.sort(cand, dim=1, descending=True, stable=True)
    order = order[:, :k]  # [n, k]
    return top[:, :k], order // vocab, order % vocab


def _finalize_eos(finished, active, prefixes, top, origin, tok, step, beam, eos, penalty) -> None:
    """Offer the EOS candidates ranked within the first ``beam``, in rank order, to the finished lists."""
    top_l, origin_l, tok_l = top[:, :beam].tolist(), origin[:, :beam].tolist(), tok[:, :beam].tolist()
    for i, sentence in enumerate(active.tolist()):
        for score, parent, token in zip(top_l[i], origin_l[i], tok_l[i], strict=True):
            if token != eos or not math.isfinite(score):
                continue
            generated = prefixes[i, parent, 1:].tolist() + [eos]
            norm = normalize_score(score, step + 1, *penalty)
            _keep_best(finished[sentence], Hypothesis(generated, score, norm), beam)


def _keep_best(finished: list[Hypothesis], hyp: Hypothesis, beam: int) -> None:
    """Insert ``hyp`` after every kept hypothesis at least as good, then drop all beyond the best ``beam``.

    So a newcomer not strictly better than the worst of a full list is dropped (ties: the earlier stays).
    """
    at = next((i for i, h in enumerate(finished) if h.normalized_score < hyp.normalized_score), len(finished))
    finished.insert(at, hyp)
    del finished[beam:]


def _cannot_improve(finished, active: Tensor, best_live: Tensor, length: int, beam: int, penalty) -> Tensor:
    """Per active sentence: its list is full and its best live score (``[n_act]``), normalized at ``length``
    (tokens generated so far, without EOS), is not better than the worst kept hypothesis."""
    flags = [
        len(finished[s]) >= beam
        and normalize_score(best, length, *penalty) <= finished[s][-1].normalized_score
        for s, best in zip(active.tolist(), best_live.tolist(), strict=True)
    ]
    return torch.tensor(flags, dtype=torch.bool, device=active.device)  # [n_act]


def _continuing(top: Tensor, origin: Tensor, tok: Tensor, beam: int, eos: int, pad: int):
    """The first ``beam`` finite non-EOS candidates by rank; missing ones become dead rows (score -inf)."""
    k = top.shape[1]
    cont = (tok != eos) & torch.isfinite(top)  # [n, k]
    ranks = torch.arange(k, device=top.device).expand_as(tok)
    pick = torch.argsort(torch.where(cont, ranks, ranks + k), dim=1, stable=True)[:, :beam]  # [n, beam]
    ok = cont.gather(1, pick)
    scores = torch.where(ok, top.gather(1, pick), -math.inf)
    origin = torch.where(ok, origin.gather(1, pick), 0)
    tokens = torch.where(ok, tok.gather(1, pick), pad)
    return scores, origin, tokens, ok.any(dim=1)


# --- scoring ------------------------------------------------------------------------------------------


def teacher_forced_logprob(model: nn.Module, src_ids: Tensor, tgt_ids: Tensor) -> Tensor:
    """Sum of log-probs of each target up to and including its first EOS (ids without BOS): Float[B]."""
    _check_src(src_ids)
    if (
        not isinstance(tgt_ids, Tensor)
        or tgt_ids.dim() != 2
        or tgt_ids.dtype != torch.long
        or tgt_ids.shape[0] != src_ids.shape[0]
    ):
        raise ValueError(f"tgt_ids must be a LongTensor [B={src_ids.shape[0]}, T], got {tgt_ids!r}")
    spec = model.step_spec()
    _check_positions(spec, tgt_ids.shape[1], src_ids, target="tgt_ids of length {}")
    is_eos = tgt_ids == spec["eos_id"]  # [B, T]
    if not bool(is_eos.any(dim=1).all()):
        raise ValueError("every row of tgt_ids must contain eos_id (hypotheses end with EOS)")
    counted = (is_eos.long().cumsum(dim=1) - is_eos.long()) == 0  # [B, T] up to the first EOS
    bos = torch.full_like(tgt_ids[:, :1], spec["bos_id"])
    tgt_in = torch.cat([bos, tgt_ids[:, :-1]], dim=1)  # [B, T]
    with _eval_mode(model):
        lp = torch.log_softmax(model(src_ids, tgt_in).float(), dim=-1)  # [B, T, V]
        picked = lp.gather(2, tgt_ids[:, :, None]).squeeze(2)  # [B, T]
        return torch.where(counted, picked, 0.0).sum(dim=1)  # [B]
