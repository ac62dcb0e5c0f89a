"""What every translation row shares: BLEU, the token count, the row itself, agreement with the PyTorch
reference, and the median timing of in-process passes."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, TypeVar

from bench.stats import summarize

MAX_LENGTH = 64  # every engine: most tokens generated per sentence
REPEATS = 5  # timed passes per in-process row (the median counts)
T = TypeVar("T")


def median_pass(run: Callable[[], T], repeats: int = REPEATS) -> tuple[T, float]:
    """Call ``run`` once untimed (warm-up) and ``repeats`` times timed: its last result and the median
    seconds of one pass.

    One pass over 64 sentences lasts tens of milliseconds for the fastest engines;
    a single timing of it on two shared cores varied up to 2x (CTranslate2's two-thread layout once
    measured slower than its one-thread layout), so every in-process engine is timed the same way.
    """
    result = run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def bleu(hyps: list[str], refs: list[str]) -> float:
    import sacrebleu

    return round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)


class Counter:
    """Counts output tokens identically for every engine: target subwords + EOS."""

    def __init__(self, tokenizer_json: str) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_str(tokenizer_json)

    def __call__(self, texts: list[str]) -> int:
        return sum(len(self.tok.encode(t).ids) + 1 for t in texts)


def make_row(
    engine: str,
    beam: int,
    concurrency: int,
    texts: list[str],
    hyps: list[str],
    refs,
    elapsed,
    count,
    lat=None,
):
    row = {
        "engine": engine,
        "beam": beam,
        "concurrency": concurrency,
        "sentences": len(texts),
        "sentences_per_s": len(texts) / elapsed,
        "tokens_per_s": count(hyps) / elapsed,
        "bleu": bleu(hyps, refs),
        "exact_match": 100.0 * sum(h == r for h, r in zip(hyps, refs, strict=True)) / len(refs),
        "hyps": hyps,
    }
    if lat is not None:
        row.update({k: v for k, v in summarize(lat).as_dict().items() if k in ("p50_ms", "p90_ms", "p99_ms")})
    return row


def agreement(rows: list[dict[str, Any]]) -> None:
    """Per row: % of sentences whose translation equals the PyTorch reference (KV cache) at the same beam."""
    reference = {r["beam"]: r["hyps"] for r in rows if r["engine"] == "pytorch (kv cache)"}
    for r in rows:
        beams = r.get("beams") or [r["beam"]] * len(r["hyps"])
        if all(b in reference for b in set(beams)):
            same = sum(h == reference[b][i] for i, (h, b) in enumerate(zip(r["hyps"], beams, strict=True)))
            r["same_as_reference"] = 100.0 * same / len(beams)
