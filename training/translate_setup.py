"""What a translator run trains and evaluates on, from its settings (``training.translate_config``): the
corpus with the pairs that fit the model, the tokenizers and the encoded examples (``prepare_data``),
the model (``build_translator``) and its loss; and a checkpoint's held-out split, rebuilt exactly from
its recorded settings for export's beam parity and the benchmark (``held_out_pairs``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.data.corpus import load_corpus
from training.data.text_batches import TranslationBatch
from training.data.tokenizer import PAD_ID, TokenizerConfig, TokenizerPair, build_tokenizers
from training.models.registry import get_entry
from training.translate_config import (
    SHARED_EMBEDDINGS_NEED_ONE_VOCABULARY,
    TranslateConfig,
    corpus_config,
    max_positions,
    model_config,
)

log = logging.getLogger("training.translate")  # the trainer's lines, whichever of its modules says them


def held_out_pairs(ckpt: dict[str, Any], split: str = "test") -> list[tuple[str, str]]:
    """The (source, reference) pairs of a translator checkpoint's ``valid`` or ``test`` split, rebuilt
    exactly from its recorded settings (export's beam parity and the benchmark evaluate on them)."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    tokenizers = TokenizerPair.from_dict(ckpt["tokenizers"])
    corpus = load_corpus(corpus_config(TranslateConfig.from_dict(ckpt["train_config"])))
    changed = split_changes(corpus.info, ckpt.get("data"))
    if changed:
        raise ValueError(
            f"the corpus at {corpus.info.get('data_path')} is not the one the run trained on ({changed}): "
            f"its {split} split would hold pairs the run trained on; put that corpus back there (the "
            "bench reads it there; export also takes --data-path: where it is now)"
        )
    return fitting_pairs(getattr(corpus, split), tokenizers, ckpt["model"]["args"]["max_positions"])[0]


# The counts a checkpoint's ``data`` records of the corpus it was split from, before the split (its
# ``<split>_size`` are of the pairs that fit the model, not ``load_corpus``'s)
SPLIT_COUNTS = ("raw_pairs", "clean_pairs")


def split_changes(info: dict[str, Any], recorded: dict[str, Any] | None) -> str:
    """How the rebuilt corpus's counts differ from those the checkpoint recorded ("" when they do not, or
    were not recorded): the split shuffles the whole corpus, so one line added or removed since training
    makes a "test" split of mostly training pairs, which held-out checks must not run on."""
    recorded = recorded or {}
    changed = [key for key in SPLIT_COUNTS if key in info and key in recorded and info[key] != recorded[key]]
    return f"{changed[0]} {info[changed[0]]}, the run's {recorded[changed[0]]}" if changed else ""


def fits(src: list[int], tgt: list[int], limit: int) -> bool:
    """Whether an encoded pair fits ``limit`` positions: the source with its EOS, the target with the
    BOS (decoder input) or EOS (decoder output) it is trained with."""
    return len(src) <= limit and len(tgt) + 1 <= limit


def fitting_pairs(
    pairs: list[tuple[str, str]], tokenizers: TokenizerPair, limit: int
) -> tuple[list[tuple[str, str]], int]:
    """The text pairs whose encodings fit ``limit`` positions, and how many were dropped."""
    src = tokenizers.encode_source([s for s, _ in pairs])
    tgt = tokenizers.encode_target([t for _, t in pairs])
    kept = [p for p, s, t in zip(pairs, src, tgt, strict=True) if fits(s, t, limit)]
    return kept, len(pairs) - len(kept)


def prepare_data(cfg: TranslateConfig, tokenizers: TokenizerPair | None = None):
    """Corpus, tokenizers (trained on the training split, unless given: a resumed run's) and encoded
    training examples."""
    corpus = load_corpus(corpus_config(cfg))
    if tokenizers is None:
        tok_cfg = TokenizerConfig(vocab_size=cfg.vocab_size, shared=cfg.shared_vocab, lowercase=cfg.lowercase)
        tokenizers = build_tokenizers(corpus.train, tok_cfg)
        warn_uncased_source(corpus.train, cfg.lowercase)
    limit, dropped = max_positions(cfg), {}
    for split in ("train", "valid", "test"):  # longer pairs would index past the position table
        kept, dropped[split] = fitting_pairs(getattr(corpus, split), tokenizers, limit)
        if not kept:  # else validation, or the test BLEU after the whole run, fails on no sentences
            raise ValueError(
                f"no {split} pair fits the model's {limit} positions (all {dropped[split]} are longer): "
                "raise --model-arg max_positions, or use a corpus of shorter sentences"
            )
        setattr(corpus, split, kept)
        corpus.info[f"{split}_size"] = len(kept)
    corpus.info["too_long_pairs"] = dropped
    if any(dropped.values()):
        log.warning("dropped pairs longer than max_positions %d tokens: %s", limit, dropped)
    warn_long_references(corpus, tokenizers, cfg.max_decode_length)
    src = tokenizers.encode_source([s for s, _ in corpus.train])
    tgt = tokenizers.encode_target([t for _, t in corpus.train])
    return corpus, tokenizers, list(zip(src, tgt, strict=True))


def warn_uncased_source(pairs: list[tuple[str, str]], lowercase: bool) -> bool:
    """Say where the training sources hold cased letters but no capital and ``--lowercase`` is off:
    the tokenizer then reads a capital it never saw as ``<unk>``, so a served "Forty two" translated
    as unknown words where "forty two" translated (the demo's corpus is lower-case). Returns whether
    it said so."""
    if lowercase:
        return False
    cased = uppercase = False
    for source, _ in pairs:
        cased = cased or source != source.upper()
        if source != source.lower():
            uppercase = True
            break
    if cased and not uppercase:
        log.info(  # the generated numbers corpus is lower-case: a note for every default run, not a warning
            "note: the corpus's sources have no capital letters, so served text with capitals will be read "
            "as unknown tokens; --lowercase folds them (in the exported tokenizer too)"
        )
    return cased and not uppercase


def warn_long_references(corpus, tokenizers: TokenizerPair, max_decode_length: int) -> dict[str, int]:
    """Warn where held-out references need more decoded tokens (their EOS included) than evaluation's
    ``--max-decode-length``: their translations are cut there (EOS forced), so validation BLEU, early
    stopping and the test BLEU count them truncated, which no line said (a tsv corpus of sentences
    longer than the default 40 tokens). Returns the count per split."""
    long = {
        split: sum(
            len(ids) + 1 > max_decode_length for ids in tokenizers.encode_target([t for _, t in pairs])
        )
        for split, pairs in (("valid", corpus.valid), ("test", corpus.test))
    }
    if any(long.values()):
        log.warning(
            "held-out references longer than --max-decode-length %d tokens (with EOS), whose translations "
            "evaluation cuts short (BLEU counts them truncated): %s; raise --max-decode-length",
            max_decode_length,
            long,
        )
    return long


def build_translator(cfg: TranslateConfig, tokenizers: TokenizerPair) -> tuple[nn.Module, dict[str, Any]]:
    """The registered model with vocabulary sizes and special ids taken from the tokenizers."""
    if not tokenizers.shared and cfg.model_args.get("share_embeddings"):
        raise ValueError(SHARED_EMBEDDINGS_NEED_ONE_VOCABULARY)
    config = model_config(cfg, tokenizers.src_vocab_size, tokenizers.tgt_vocab_size)
    return get_entry(cfg.model).builder(config), asdict(config)


def loss_on(model: nn.Module, batch: TranslationBatch, label_smoothing: float) -> torch.Tensor:
    """Token-averaged cross entropy with label smoothing, padding ignored."""
    logits = model(batch.src, batch.tgt_in)  # (B, T, V)
    return F.cross_entropy(
        logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD_ID, label_smoothing=label_smoothing
    )
