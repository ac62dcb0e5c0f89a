"""Train a translator: ``python -m training.translate --model transformer --output-dir checkpoints``.

Teacher forcing with label smoothing, Adam with warmup then inverse-sqrt or cosine decay, gradient
clipping, early stopping on validation BLEU (greedy decodes, sacrebleu), a wall-clock budget that stops
gracefully and keeps the best weights, then test BLEU / exact match with beam search and one
checkpoint (contract 1) with the tokenizers inside. Defaults come from a per-model recipe table
(``training.translate_flags``, with the command line). ``--device`` and ``--amp [bf16|fp16]`` choose
where and how it computes (on CUDA or the CPU); under ``torchrun`` it trains data-parallel (the loop
lives in ``training.translate_loop``). After every epoch it writes ``<name>.resume.pt``, which
``--resume`` (and a torchrun restart, by itself) continues bit for bit (``training.translate_resume``).
A run whose loss or weights go NaN or inf stops there with one line naming the epoch and step and what
to try (exit status 2), and writes nothing from those weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.cli import run_trainer
from training.data.corpus import CorpusConfig, load_corpus
from training.data.text_batches import TranslationBatch
from training.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, TokenizerConfig, TokenizerPair, build_tokenizers
from training.dist_timeout import check_dist_timeout
from training.flags import check_bool_model_args, check_minimum, check_positive, check_seed
from training.mixed_precision import amp_choice
from training.models import list_models, make_config
from training.models.registry import get_entry
from training.tracking import check_output_dir
from training.translate_flags import (
    BASE,
    DEFAULT_MODEL,
    DEFAULT_OUTPUT_DIR,
    PRESETS,
    RECIPES,
    absolute_data_path,
    build_parser,
    given_values,
)
from training.translate_flags import parse_model_args as parse_model_args  # importable from here, as it was
from training.translate_resume import resumed_config

log = logging.getLogger(__name__)


def resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """BASE < model recipe < preset < explicit command-line values; on ``--resume``, the interrupted
    run's settings < the command line's (``resumed_config``). Checked before any data is read."""
    given = given_values(args)
    cfg = resumed_config(args.resume, given) if args.resume else new_config(given)
    check_config(cfg)
    return cfg


def new_config(given: dict[str, Any]) -> dict[str, Any]:
    """A new run's settings from the tables (``training.translate_flags``) and the flags ``given``."""
    model = given.get("model", DEFAULT_MODEL)
    if model not in list_models("translate"):
        raise ValueError(f"--model {model!r} is not a translator; choose from {list_models('translate')}")
    recipe = RECIPES.get(model, {})
    preset = dict(PRESETS.get(given.get("preset") or "", {}))
    preset_model = preset.pop("per_model", {}).get(model, {})
    cfg = {**BASE, **recipe, **preset, **preset_model}
    cfg["model_args"] = {
        **recipe.get("model_args", {}),
        **preset_model.get("model_args", {}),
        **given.get("model_args", {}),
    }
    cfg.update({key: value for key, value in given.items() if key in BASE and key != "model_args"})
    if "batch_size" in given:
        cfg["batch_tokens"] = None
    cfg["amp"] = amp_choice(cfg["amp"])  # --no-amp's False: float32, recorded as None
    if "max_decode_length" not in given:
        cfg["max_decode_length"] = default_decode_length(cfg)
    cfg.update(
        model=model,
        preset=given.get("preset"),
        output_dir=given.get("output_dir", DEFAULT_OUTPUT_DIR),
        name=given.get("name", model),
        resume=None,
    )
    if cfg["data_path"]:  # absolute, so export and bench rebuild the held-out splits from anywhere
        cfg["data_path"] = absolute_data_path(cfg["data_path"])
    return cfg


def default_decode_length(cfg: dict[str, Any]) -> int:
    """The recipe's evaluation length, capped at a shorter ``--model-arg max_positions``: an unset flag's
    default above it stopped the run with an error about a flag the user never gave (a max_positions
    that is not a positive int is left for ``check_config`` to name)."""
    limit = max_positions(cfg)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        return cfg["max_decode_length"]
    return min(cfg["max_decode_length"], limit)


AT_LEAST_ONE = ("epochs", "test_beam", "max_decode_length", "batch_size", "batch_tokens")
# 0 turns these off (or means "all", "torch's choice"); a negative --eval-every would validate after
# every step, --time-budget stop after the first, --val-limit drop sentences from the end
ZERO_OR_MORE = ("threads", "warmup_steps", "clip_norm", "patience", "eval_every", "val_limit", "time_budget")


# Model fields the tokenizers set (model_config): given as --model-arg, pad_id=5 built a model that read
# the data's padding (id 0) as a token and masked the real token 5, with no error.
TOKENIZER_MODEL_ARGS = {
    "src_vocab_size": "the source tokenizer (--vocab-size)",
    "tgt_vocab_size": "the target tokenizer (--vocab-size)",
    "pad_id": f"the tokenizers (<pad> is {PAD_ID})",
    "bos_id": f"the tokenizers (<s> is {BOS_ID})",
    "eos_id": f"the tokenizers (</s> is {EOS_ID})",
}


# The Transformer recipe shares its embeddings, so --separate-vocab alone meets this: name both ways out.
SHARED_EMBEDDINGS_NEED_ONE_VOCABULARY = (
    "--separate-vocab: share_embeddings=True (the model's recipe, or --model-arg) needs one vocabulary for "
    "source and target; drop --separate-vocab, or add --model-arg share_embeddings=False"
)


def check_config(cfg: dict[str, Any]) -> None:
    """Flags that would only fail after training (or mid-way), named before any data is read."""
    check_seed(cfg["seed"])
    check_dist_timeout(cfg["dist_timeout"])
    check_minimum(1, {key: cfg[key] for key in AT_LEAST_ONE})
    check_positive({"lr": cfg["lr"]})
    check_minimum(0, {key: cfg[key] for key in ZERO_OR_MORE})
    if not 0 <= cfg["dropout"] < 1:
        raise ValueError(f"--dropout must be in [0, 1), got {cfg['dropout']}")
    if not 0 <= cfg["label_smoothing"] < 1:
        raise ValueError(f"--label-smoothing must be in [0, 1), got {cfg['label_smoothing']}")
    fields = {f.name for f in dataclasses.fields(get_entry(cfg["model"]).config_cls)}
    unknown = sorted(set(cfg["model_args"]) - fields)
    if unknown:
        raise ValueError(
            f"--model-arg {', '.join(unknown)}: not a field of {cfg['model']}; accepted: {sorted(fields)}"
        )
    check_bool_model_args(get_entry(cfg["model"]).config_cls, cfg["model_args"])
    owned = [
        f"{key} comes from {TOKENIZER_MODEL_ARGS[key]}"
        for key in sorted(cfg["model_args"])
        if key in TOKENIZER_MODEL_ARGS
    ]
    if owned:  # the data is padded and its loss masked with the tokenizers' ids, whatever the model is told
        raise ValueError(f"--model-arg {'; '.join(owned)}, not from --model-arg")
    if cfg["model_args"].get("share_embeddings") and not cfg["shared_vocab"]:
        raise ValueError(SHARED_EMBEDDINGS_NEED_ONE_VOCABULARY)  # else found after the corpus and BPE
    try:  # the architecture's own checks (heads dividing d_model, ...), with stand-in vocabulary sizes
        model_config(cfg, src_vocab_size=8, tgt_vocab_size=8)
    except ValueError as exc:
        raise ValueError(f"--model-arg: {exc}") from None
    if cfg["max_decode_length"] > max_positions(cfg):
        raise ValueError(
            f"--max-decode-length {cfg['max_decode_length']} is above the model's max_positions "
            f"{max_positions(cfg)}"
        )
    check_output_dir(cfg["output_dir"])


def max_positions(cfg: dict[str, Any]) -> int:
    """The longest sequence the model takes: ``--model-arg max_positions`` or 4x the word limit, >= 256."""
    return cfg["model_args"].get("max_positions", max(256, cfg["max_length"] * 4))


def corpus_config(cfg: dict[str, Any]) -> CorpusConfig:
    """The corpus settings of a training config (also a checkpoint's ``train_config``)."""
    return CorpusConfig(
        kind=cfg["corpus"],
        data_path=cfg["data_path"],
        lang=cfg["lang"],
        n_pairs=cfg["n_pairs"],
        lowercase=cfg["lowercase"],
        max_length=cfg["max_length"],
        valid_size=cfg["valid_size"],
        test_size=cfg["test_size"],
        seed=cfg["seed"],
    )


def held_out_pairs(ckpt: dict[str, Any], split: str = "test") -> list[tuple[str, str]]:
    """The (source, reference) pairs of a translator checkpoint's ``valid`` or ``test`` split, rebuilt
    exactly from its recorded settings (export's beam parity and the benchmark evaluate on them)."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    tokenizers = TokenizerPair.from_dict(ckpt["tokenizers"])
    pairs = getattr(load_corpus(corpus_config(ckpt["train_config"])), split)
    return fitting_pairs(pairs, tokenizers, ckpt["model"]["args"]["max_positions"])[0]


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


def prepare_data(cfg: dict[str, Any], tokenizers: TokenizerPair | None = None):
    """Corpus, tokenizers (trained on the training split, unless given: a resumed run's) and encoded
    training examples."""
    corpus = load_corpus(corpus_config(cfg))
    if tokenizers is None:
        tok_cfg = TokenizerConfig(
            vocab_size=cfg["vocab_size"], shared=cfg["shared_vocab"], lowercase=cfg["lowercase"]
        )
        tokenizers = build_tokenizers(corpus.train, tok_cfg)
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
    src = tokenizers.encode_source([s for s, _ in corpus.train])
    tgt = tokenizers.encode_target([t for _, t in corpus.train])
    return corpus, tokenizers, list(zip(src, tgt, strict=True))


def build_translator(cfg: dict[str, Any], tokenizers: TokenizerPair) -> tuple[nn.Module, dict[str, Any]]:
    """The registered model with vocabulary sizes and special ids taken from the tokenizers."""
    if not tokenizers.shared and cfg["model_args"].get("share_embeddings"):
        raise ValueError(SHARED_EMBEDDINGS_NEED_ONE_VOCABULARY)
    config = model_config(cfg, tokenizers.src_vocab_size, tokenizers.tgt_vocab_size)
    return get_entry(cfg["model"]).builder(config), asdict(config)


def model_config(cfg: dict[str, Any], src_vocab_size: int, tgt_vocab_size: int) -> Any:
    """The model's config dataclass from the flags and the vocabulary sizes (its own checks run here)."""
    args = {
        "src_vocab_size": src_vocab_size,
        "tgt_vocab_size": tgt_vocab_size,
        "dropout": cfg["dropout"],
        "pad_id": PAD_ID,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        "max_positions": max_positions(cfg),
        **cfg["model_args"],
    }
    fields = {f.name for f in dataclasses.fields(get_entry(cfg["model"]).config_cls)}
    return make_config(
        cfg["model"], **{k: v for k, v in args.items() if k in fields or k in cfg["model_args"]}
    )


def loss_on(model: nn.Module, batch: TranslationBatch, label_smoothing: float) -> torch.Tensor:
    """Token-averaged cross entropy with label smoothing, padding ignored."""
    logits = model(batch.src, batch.tgt_in)  # (B, T, V)
    return F.cross_entropy(
        logits.flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD_ID, label_smoothing=label_smoothing
    )


def train(args: argparse.Namespace | list[str] | None = None) -> Path:
    """Run a full training from parsed arguments (or an argv list); returns the checkpoint path."""
    from training.translate_loop import run  # the loop imports this module's data and evaluation helpers

    if not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(args)
    return run(resolve_config(args))


def main(argv: list[str] | None = None) -> int:
    return run_trainer(lambda: train(argv))


if __name__ == "__main__":
    raise SystemExit(main())
