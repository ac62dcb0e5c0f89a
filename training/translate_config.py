"""A translator run's settings, ``TranslateConfig``: a new run's, layered from the recipe tables
(``training.translate_flags``) and the flags given, and checked before any data is read; and what the
model and the corpus are made with from them (``model_config``, ``corpus_config``). A ``--resume``
run's come from its resume state (``training.translate_resume``); the command (``training.translate``)
chooses between the two. A checkpoint and a resume state hold the config as a dict (``asdict``), which
``TranslateConfig.from_dict`` reads back, an older version's too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from training.data.corpus import CorpusConfig
from training.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, SPECIALS
from training.flags import check_model_args, check_run_ranges
from training.mixed_precision import amp_choice
from training.models import list_models, make_config
from training.models.registry import get_entry
from training.resume import check_resumed_epochs
from training.tracking import check_name, check_output_dir
from training.translate_flags import (
    BASE,
    DEFAULT_MODEL,
    DEFAULT_OUTPUT_DIR,
    PRESETS,
    RECIPES,
    absolute_data_path,
)


@dataclass(frozen=True)
class TranslateConfig:
    """Every setting of a translator run, resolved: ``BASE``'s keys (their defaults are there, layered
    with the recipes and presets), then what the run is and where it writes."""

    corpus: str
    data_path: str | None  # absolute, each comma-separated part (absolute_data_path)
    lang: str
    n_pairs: int
    lowercase: bool
    valid_size: float
    test_size: float
    max_length: int
    vocab_size: int
    shared_vocab: bool
    epochs: int
    batch_tokens: int | None  # None where --batch-size is given
    batch_size: int | None
    lr: float
    warmup_steps: int
    schedule: str
    label_smoothing: float
    clip_norm: float
    weight_decay: float
    dropout: float
    patience: int
    eval_every: int
    val_limit: int
    time_budget: float
    max_decode_length: int
    test_beam: int
    seed: int
    threads: int
    model_args: dict[str, Any]
    device: str
    dist_timeout: float | None
    amp: str | None  # bf16 | fp16 | None: float32
    debug_rank_hashes: str | None
    progress: bool
    model: str
    preset: str | None
    output_dir: str
    name: str
    resume: str | None  # the resume state or checkpoint the run continues

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> TranslateConfig:
        """The config a checkpoint's or resume state's ``train_config`` holds: a setting an older file
        lacks takes its ``BASE`` value (no preset, not resumed), one this version has not is left out."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {**BASE, "preset": None, "resume": None, **{k: v for k, v in saved.items() if k in known}}
        missing = sorted(known - set(values))
        if missing:
            raise ValueError(f"a translator's train_config without {', '.join(missing)}")
        return cls(**values)


def new_config(given: dict[str, Any]) -> TranslateConfig:
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
    cfg["dropout"] = one_dropout(given, cfg["model_args"], cfg["dropout"])
    check_corpus_flags(given, cfg["corpus"], cfg["data_path"])
    if "batch_size" in given:
        cfg["batch_tokens"] = None
    cfg["amp"] = amp_choice(cfg["amp"])  # --no-amp's False: float32, recorded as None
    cfg.update(
        model=model,
        preset=given.get("preset"),
        output_dir=given.get("output_dir", DEFAULT_OUTPUT_DIR),
        name=given.get("name", model),
        resume=None,
    )
    if cfg["data_path"]:  # absolute, so export and bench rebuild the held-out splits from anywhere
        cfg["data_path"] = absolute_data_path(cfg["data_path"])
    config = TranslateConfig(**cfg)
    if "max_decode_length" not in given:
        config = dataclasses.replace(config, max_decode_length=default_decode_length(config))
    return config


def check_corpus_flags(given: dict[str, Any], corpus: str, data_path: str | None) -> None:
    """Refuse a corpus flag the chosen corpus does not read, as ``read_pairs`` refuses a --data-path for
    the generated one: ``--n-pairs`` sizes the generated numbers corpus (a file was read whole, the
    --n-pairs 1000 asked for silently ignored), and ``--lang`` names a parallel prefix's target file, or the
    generated corpus's language (a tsv file, or 'src_file,tgt_file', holds the language it holds)."""
    if "n_pairs" in given and corpus != "numbers":
        raise ValueError(
            f"--n-pairs sizes the generated numbers corpus; --corpus {corpus} reads every pair of its "
            "files: drop --n-pairs (or cut the files)"
        )
    if "lang" in given and (corpus == "tsv" or (corpus == "parallel" and "," in (data_path or ""))):
        files = "a tsv file" if corpus == "tsv" else "a --data-path naming both files"
        raise ValueError(
            f"--lang {given['lang']} names the numbers corpus's target language, or a parallel --data-path "
            f"prefix's target file (prefix.LANG); {files} is read as it is: drop --lang"
        )


def one_dropout(given: dict[str, Any], model_args: dict[str, Any], dropout: float) -> float:
    """The run's dropout rate: a ``--model-arg dropout`` is the one the model is built with
    (``model_config`` lays it over ``--dropout``), so it is the one recorded too; given beside another
    ``--dropout``, it is refused (the run trained with the --model-arg's rate while its train_config said
    --dropout's, with no word). One outside [0, 1) is left for the model's own check to name."""
    if "dropout" not in model_args:
        return dropout
    arg = model_args["dropout"]
    if "dropout" in given and "dropout" in given.get("model_args", {}) and given["dropout"] != arg:
        raise ValueError(
            f"--dropout {given['dropout']} and --model-arg dropout={arg!r} disagree; give the rate once"
        )
    number = isinstance(arg, (int, float)) and not isinstance(arg, bool)
    return arg if number and 0 <= arg < 1 else dropout


def default_decode_length(cfg: TranslateConfig) -> int:
    """The recipe's evaluation length, capped at a shorter ``--model-arg max_positions``: an unset flag's
    default above it stopped the run with an error about a flag the user never gave (a max_positions
    that is not a positive int is left for ``check_config`` to name)."""
    limit = max_positions(cfg)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        return cfg.max_decode_length
    return min(cfg.max_decode_length, limit)


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


def check_config(cfg: TranslateConfig, *, name_given: bool = False) -> None:
    """Flags that would only fail after training (or mid-way), named before any data is read;
    ``name_given``: ``--name`` is on the command line (on ``--resume``, not the interrupted run's)."""
    check_run_ranges(cfg, AT_LEAST_ONE, ZERO_OR_MORE)
    if not 0 <= cfg.dropout < 1:
        raise ValueError(f"--dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.vocab_size <= len(SPECIALS):  # else refused by the BPE trainer, once the corpus is read
        raise ValueError(
            f"--vocab-size must exceed the {len(SPECIALS)} special tokens {', '.join(SPECIALS)}, got "
            f"{cfg.vocab_size}"
        )
    check_model_args(cfg.model, get_entry(cfg.model).config_cls, cfg.model_args)
    owned = [
        f"{key} comes from {TOKENIZER_MODEL_ARGS[key]}"
        for key in sorted(cfg.model_args)
        if key in TOKENIZER_MODEL_ARGS
    ]
    if owned:  # the data is padded and its loss masked with the tokenizers' ids, whatever the model is told
        raise ValueError(f"--model-arg {'; '.join(owned)}, not from --model-arg")
    if cfg.model_args.get("share_embeddings") and not cfg.shared_vocab:
        raise ValueError(SHARED_EMBEDDINGS_NEED_ONE_VOCABULARY)  # else found after the corpus and BPE
    try:  # the architecture's own checks (heads dividing d_model, ...), with stand-in vocabulary sizes
        model_config(cfg, src_vocab_size=8, tgt_vocab_size=8)
    except ValueError as exc:
        raise ValueError(f"--model-arg: {exc}") from None
    if cfg.max_decode_length > max_positions(cfg):
        raise ValueError(
            f"--max-decode-length {cfg.max_decode_length} is above the model's max_positions "
            f"{max_positions(cfg)}"
        )
    if cfg.resume:  # never fewer than the interrupted run trained
        check_resumed_epochs(cfg.resume, cfg.epochs)
    check_output_dir(cfg.output_dir, cfg.name)
    if not cfg.resume or name_given:  # a resumed run's inherited name is the interrupted run's, let be
        check_name(cfg.name)


def max_positions(cfg: TranslateConfig) -> int:
    """The longest sequence the model takes: ``--model-arg max_positions`` or 4x the word limit, >= 256."""
    return cfg.model_args.get("max_positions", max(256, cfg.max_length * 4))


def model_config(cfg: TranslateConfig, src_vocab_size: int, tgt_vocab_size: int) -> Any:
    """The model's config dataclass from the flags and the vocabulary sizes (its own checks run here)."""
    args = {
        "src_vocab_size": src_vocab_size,
        "tgt_vocab_size": tgt_vocab_size,
        "dropout": cfg.dropout,
        "pad_id": PAD_ID,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        "max_positions": max_positions(cfg),
        **cfg.model_args,
    }
    fields = {f.name for f in dataclasses.fields(get_entry(cfg.model).config_cls)}
    return make_config(cfg.model, **{k: v for k, v in args.items() if k in fields or k in cfg.model_args})


def corpus_config(cfg: TranslateConfig) -> CorpusConfig:
    """The corpus settings of a run's config (also a checkpoint's, for its held-out split)."""
    return CorpusConfig(
        kind=cfg.corpus,
        data_path=cfg.data_path,
        lang=cfg.lang,
        n_pairs=cfg.n_pairs,
        lowercase=cfg.lowercase,
        max_length=cfg.max_length,
        valid_size=cfg.valid_size,
        test_size=cfg.test_size,
        seed=cfg.seed,
    )
