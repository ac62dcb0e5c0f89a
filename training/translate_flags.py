"""The translator trainer's command line (``python -m training.translate``): the recipe tables a run's
settings are layered from (``BASE`` < the model's recipe < a preset < the flags given) and the argument
parser, whose unset flags are None so that a ``--resume`` run can tell them from the ones given."""

from __future__ import annotations

import argparse
import ast
import os
from typing import Any

from training.data.corpus import CORPUS_KINDS
from training.dist_timeout import add_dist_timeout_flag
from training.mixed_precision import add_amp_flags
from training.optim import SCHEDULES
from training.runtime import DEVICES

DESCRIPTION = (
    "Train a translator: ``python -m training.translate --model transformer --output-dir checkpoints``."
)
DEFAULT_MODEL = "transformer"
DEFAULT_OUTPUT_DIR = "checkpoints"

# Everything a run needs, with the values used when neither the recipe nor the command line says.
BASE = {
    "corpus": "numbers",
    "data_path": None,
    "lang": "fr",
    "n_pairs": 36000,
    "lowercase": False,
    "valid_size": 0.05,
    "test_size": 0.05,
    "max_length": 64,
    "vocab_size": 1000,
    "shared_vocab": True,
    "epochs": 30,
    "batch_tokens": 3000,
    "batch_size": None,
    "lr": 1e-3,
    "warmup_steps": 300,
    "schedule": "inverse_sqrt",
    "label_smoothing": 0.1,
    "clip_norm": 1.0,
    "weight_decay": 0.0,
    "dropout": 0.1,
    "patience": 4,
    "eval_every": 0,
    "val_limit": 500,
    "time_budget": 8.5,
    "max_decode_length": 40,
    "test_beam": 4,
    "seed": 0,
    "threads": 0,
    "model_args": {},
    "device": "auto",
    "dist_timeout": None,
    "amp": None,
    "debug_rank_hashes": None,
    "progress": True,
}
# The recurrent translators (GRU and LSTM with attention) train with one recipe.
RNN_RECIPE: dict[str, Any] = {
    "lr": 2e-3,
    "warmup_steps": 100,
    "batch_tokens": 1500,
    "model_args": {
        "embed_dim": 128,
        "hidden_size": 256,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "attention_dim": 128,
    },
}
# Per-model recipes: the measured defaults (figures in docs/corpus.md, "Measured recipes").
RECIPES: dict[str, dict[str, Any]] = {
    "transformer": {
        "lr": 2e-3,
        "warmup_steps": 100,
        "batch_tokens": 1000,
        "model_args": {
            "d_model": 128,
            "heads": 4,
            "ffn_dim": 512,
            "encoder_layers": 3,
            "decoder_layers": 3,
            "share_embeddings": True,
            "tie_output": True,
        },
    },
    "gru_attention": RNN_RECIPE,
    "lstm_attention": RNN_RECIPE,
}
# Presets: settings for every model plus per-model overrides (a smaller Transformer for the demo).
PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        "n_pairs": 12000,
        "time_budget": 2.0,
        "epochs": 12,
        "val_limit": 200,
        "threads": 1,
        "batch_tokens": 800,
        "lr": 3e-3,
        "warmup_steps": 60,
        "max_decode_length": 32,
        "per_model": {
            "transformer": {"model_args": {"encoder_layers": 2, "decoder_layers": 2, "ffn_dim": 256}}
        },
    },
}


def build_parser() -> argparse.ArgumentParser:
    """The trainer's flags, in groups: the data, the model and its training, and the run itself."""
    p = argparse.ArgumentParser(prog="python -m training.translate", description=DESCRIPTION)
    p.add_argument(
        "--model",
        help=f"registered translator (default: {DEFAULT_MODEL}; on --resume, the interrupted run's)",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a quick recipe, e.g. 'demo' (~2 minutes); its settings replace the defaults named here",
    )
    add_data_flags(p.add_argument_group("data (on --resume, the interrupted run's)"))
    add_training_flags(p.add_argument_group("model and training"))
    add_run_flags(p.add_argument_group("the run: where it computes, what it writes, --resume"))
    return p


def add_data_flags(g: argparse._ArgumentGroup) -> None:
    """The corpus, its split and the tokenizers': what a resumed run must be given alike, or not at all."""
    g.add_argument("--corpus", choices=CORPUS_KINDS, help="numbers (offline generator) | tsv | parallel")
    g.add_argument("--data-path", help="tsv file, or 'src_file,tgt_file' / prefix (prefix.en, prefix.LANG)")
    g.add_argument(
        "--lang",
        choices=("fr", "de"),
        help="target language of the numbers corpus, and of a parallel --data-path prefix (prefix.LANG) "
        f"(default: {BASE['lang']})",
    )
    g.add_argument(
        "--n-pairs", type=int, help=f"size of the generated numbers corpus (default: {BASE['n_pairs']})"
    )
    g.add_argument(
        "--lowercase", action="store_true", default=None, help="lower-case (also in the tokenizer)"
    )
    g.add_argument("--vocab-size", type=int, help="BPE vocabulary size")
    g.add_argument(
        "--separate-vocab",
        dest="shared_vocab",
        action="store_false",
        default=None,
        help="a vocabulary of its own for each side (default: one shared by source and target)",
    )
    g.add_argument("--seed", type=int, help="the corpus split, batch order, initial weights and dropout")


def add_training_flags(g: argparse._ArgumentGroup) -> None:
    """The model's overrides, the optimizer and schedule, and when training stops."""
    g.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE", help="config override")
    g.add_argument("--epochs", type=int, help=f"default: {BASE['epochs']} (--time-budget may stop it sooner)")
    batch = g.add_mutually_exclusive_group()
    batch.add_argument("--batch-tokens", type=int, help="padded tokens per batch, per process")
    batch.add_argument(
        "--batch-size", type=int, help="sentences per batch, per process (instead of --batch-tokens)"
    )
    g.add_argument("--lr", type=float)
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--schedule", choices=SCHEDULES)
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--clip-norm", type=float, help="gradient clipping max norm (0 = off)")
    g.add_argument("--dropout", type=float)
    g.add_argument(
        "--patience",
        type=int,
        help=f"evaluations without BLEU gain before stopping (0 = never; default: {BASE['patience']})",
    )
    g.add_argument("--eval-every", type=int, help="validate every N steps (0 = every epoch)")
    g.add_argument(
        "--val-limit",
        type=int,
        help=f"validation sentences decoded per evaluation (0 = all of them) (default: {BASE['val_limit']})",
    )
    g.add_argument(
        "--time-budget",
        type=float,
        help="minutes of training before stopping gracefully (0 = no limit), keeping the best weights; on "
        "--resume, the interrupted run's minutes count, and a run it stopped trains on from where it "
        f"stopped given a larger one, or 0 (default: {BASE['time_budget']})",
    )
    g.add_argument("--test-beam", type=int, help="beam size for the final test metrics")
    g.add_argument(
        "--max-decode-length",
        type=int,
        help=f"longest translation decoded in evaluation (default: {BASE['max_decode_length']}, or the "
        "model's max_positions where lower)",
    )


def add_run_flags(g: argparse._ArgumentGroup) -> None:
    """Where the run computes and how (device, threads, precision, torchrun), what it writes, and
    ``--resume``."""
    g.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's choice; 1 helps on a busy CPU)"
    )
    g.add_argument("--device", choices=DEVICES, help="auto (CUDA when available), cpu or cuda")
    add_dist_timeout_flag(g)
    add_amp_flags(g, "float32")
    g.add_argument("--debug-rank-hashes", metavar="DIR", help="each rank writes its final weights hash here")
    g.add_argument(
        "--output-dir",
        help=f"where the checkpoint, metrics, resume state and curves go (default: {DEFAULT_OUTPUT_DIR}; "
        "on --resume, the interrupted run's: the resume file's directory, less a --name's own folders)",
    )
    g.add_argument(
        "--name",
        help="file stem (default: the model name; on --resume, the interrupted run's); a new run under an "
        "earlier run's name replaces that run's metrics and resume state at its first validation or "
        "resume state, whichever comes first, and its checkpoint only when it writes its own; refused while "
        "another run writes under it",
    )
    g.add_argument(
        "--resume",
        metavar="FILE",
        help="continue an interrupted run from its <name>.pt or <name>.resume.pt (written after every "
        "epoch), ending where the uninterrupted run would have: weights, optimizer, schedule, tokenizers "
        "(not trained again), batch order, dropout draws, best weights, early stopping and records. The "
        "flags not given are the interrupted run's; a data, model, --dropout, batch or optimizer flag "
        "(--label-smoothing and --clip-norm too) given with another value is refused, and so is a corpus that changed since (a corpus that "
        "moved is read at the new --data-path given, checked to hold the same pairs); --epochs may "
        "lengthen the run, never shorten it (a run with nothing left to train whose checkpoint is "
        "written is left as it is). Under torchrun --max-restarts, a restarted attempt resumes by itself "
        "from the resume state its own job wrote",
    )
    g.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bar (none off a terminal)",
    )


def parse_model_args(items: list[str]) -> dict[str, Any]:
    """'d_model=256' -> {'d_model': 256}; values are Python literals, otherwise strings."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-arg expects KEY=VALUE, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def given_values(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line gives, by config key (an unset flag is None, so it is left out);
    ``model_args`` where a ``--model-arg`` is given."""
    keys = (*BASE, "model", "preset", "output_dir", "name")
    given = {key: getattr(args, key) for key in keys if getattr(args, key, None) is not None}
    given.pop("model_args", None)
    if args.model_arg:
        given["model_args"] = parse_model_args(args.model_arg)
    return given


def absolute_data_path(data_path: str) -> str:
    """A ``--data-path`` with each of its comma-separated parts absolute, as the run records it: export
    and bench rebuild the held-out splits from anywhere, and a resumed run compares it with its own."""
    return ",".join(os.path.abspath(part) for part in data_path.split(","))
