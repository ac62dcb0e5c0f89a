"""What every translation row shares: the sentences of one translator (its workload), BLEU, the token
count, the row itself, agreement with the PyTorch reference, and the median timing of in-process passes."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bench.inputs import positive_int
from bench.stats import summarize

MAX_LENGTH = 64  # most tokens generated per sentence (fewer for fewer positions: checkpoint_max_length)
REPEATS = 5  # timed passes per in-process row (the median counts)
T = TypeVar("T")


def median_pass(run: Callable[[], T], repeats: int = REPEATS, warmup: bool = True) -> tuple[T, float]:
    """Call ``run`` once untimed (warm-up, unless ``warmup`` is False) and ``repeats`` times timed: its
    last result and the median seconds of one pass.

    One pass over 64 sentences lasts tens of milliseconds for the fastest engines;
    a single timing of it on two shared cores varied up to 2x (CTranslate2's two-thread layout once
    measured slower than its one-thread layout), so every in-process engine is timed the same way.
    """
    result = run() if warmup else None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def checkpoint_max_length(ckpt: dict[str, Any]) -> int:
    """The ``max_length`` every row of a checkpoint's workload searches with: what the gateway gives a
    request that does not choose one (:data:`MAX_LENGTH`, or the model's ``max_positions`` if lower),
    read from the checkpoint's config the exported entries carry. A fixed 64 had the gateway refuse every
    request to a translator trained with ``--model-arg max_positions=32`` (422), and the engines too."""
    from serving.decoding.options import default_max_length

    return default_max_length(ckpt["model"]["args"].get("max_positions"))


def bleu(hyps: list[str], refs: list[str]) -> float:
    """Training's corpus BLEU (:func:`training.translation_eval.corpus_bleu`), so a row reads as its log."""
    from training.translation_eval import corpus_bleu

    return round(corpus_bleu(hyps, refs), 2)


class Counter:
    """Counts output tokens identically for every engine: target subwords + EOS."""

    def __init__(self, tokenizer_json: str) -> None:
        from tokenizers import Tokenizer

        from training.data.tokenizer import literal_specials

        self.tok = literal_specials(Tokenizer.from_str(tokenizer_json))

    def __call__(self, texts: list[str]) -> int:
        return sum(len(self.tok.encode(t).ids) + 1 for t in texts)


@dataclass(frozen=True)
class Workload:
    """One translator's checkpoint and the held-out test sentences every engine translates for it."""

    model: str
    checkpoint: Path
    ckpt: dict[str, Any]
    texts: list[str]
    refs: list[str]
    count: Counter

    @classmethod
    def load(cls, checkpoints: Path, model: str, sentences: int) -> Workload:
        """The first ``sentences`` test pairs of ``checkpoints/<model>.pt``, rebuilt from its settings."""
        from training.checkpoint import load_checkpoint
        from training.translate_setup import held_out_pairs

        path = Path(checkpoints) / f"{model}.pt"
        ckpt = load_checkpoint(path)
        pairs = held_out_pairs(ckpt, "test")[:sentences]
        count = Counter(ckpt["tokenizers"]["target"])
        return cls(model, path, ckpt, [s for s, _ in pairs], [t for _, t in pairs], count)

    @property
    def max_length(self) -> int:
        """Most tokens generated per sentence by every row of this workload (:func:`checkpoint_max_length`),
        one value for the whole table so that its rows stay comparable."""
        return checkpoint_max_length(self.ckpt)


def workload_parser(prog: str, description: str, concurrency_help: str) -> argparse.ArgumentParser:
    """A measuring tool's parser with the flags of a translation workload: ``--repository`` (exported
    entries), ``--checkpoints`` (the held-out sentences), ``--model``, ``--entry`` (the entry to run,
    default ``--model``) and ``--concurrency`` (16)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--repository", type=Path, required=True, help="an exported model repository")
    parser.add_argument("--checkpoints", type=Path, required=True, help="where the held-out sentences are")
    parser.add_argument("--model", default="transformer", help="the translator whose held-out sentences run")
    parser.add_argument(
        "--entry", help="the repository entry to run (default: --model; e.g. transformer_int8, its int8 twin)"
    )
    parser.add_argument("--concurrency", type=positive_int, default=16, help=concurrency_help)
    return parser


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
    served: list[str] | None = None,
):
    """One engine's row over one pass of ``texts`` lasting ``elapsed`` seconds. ``served``: every
    translation of a run of several passes, each text's together (:func:`bench.translation_gateway.
    _gateway_run`); tokens/s are then read over those, a pass's worth, and BLEU and exact match are
    each pass's (every text's n-th answer) averaged, since ``hyps`` holds a marker (no translation,
    and several times as many tokens) for a text whose passes disagreed. ``hyps`` stays what agreement
    with the reference reads."""
    scored = served or hyps
    passes = _passes(scored, len(texts))
    each = [scored[n::passes] for n in range(passes)]  # served holds each text's passes together
    row = {
        "engine": engine,
        "beam": beam,
        "concurrency": concurrency,
        "sentences": len(texts),
        "sentences_per_s": len(texts) / elapsed,
        "tokens_per_s": count(scored) / passes / elapsed,
        "bleu": round(statistics.fmean(bleu(one, refs) for one in each), 2),
        "exact_match": 100.0
        * sum(h == r for one in each for h, r in zip(one, refs, strict=True))
        / len(scored),
        "hyps": hyps,
    }
    if lat is not None:
        row.update({k: v for k, v in summarize(lat).as_dict().items() if k in ("p50_ms", "p90_ms", "p99_ms")})
    return row


def _passes(translations: list[str], texts: int) -> int:
    """How many passes over ``texts`` texts ``translations`` are."""
    if not translations or len(translations) % texts:
        raise ValueError(f"{len(translations)} translations are no whole number of passes over {texts} texts")
    return len(translations) // texts


def agreement(rows: list[dict[str, Any]], texts: list[str], shown: int = 5) -> None:
    """Per row: % of sentences whose translation equals the PyTorch reference (KV cache) at the same beam,
    how many differ, and the first ``shown`` that differ (index, beam, source, output, reference)."""
    reference = {r["beam"]: r["hyps"] for r in rows if r["engine"] == "pytorch (kv cache)"}
    for r in rows:
        beams = r.get("beams") or [r["beam"]] * len(r["hyps"])
        if not all(b in reference for b in set(beams)):
            continue
        differ = [
            {"index": i, "beam": b, "source": texts[i], "output": h, "reference": reference[b][i]}
            for i, (h, b) in enumerate(zip(r["hyps"], beams, strict=True))
            if h != reference[b][i]
        ]
        r["same_as_reference"] = 100.0 * (len(beams) - len(differ)) / len(beams)
        r["differs_from_reference"] = len(differ)
        r["first_differences"] = differ[:shown]
