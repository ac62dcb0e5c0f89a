"""Train a translator: ``python -m training.translate --model transformer --output-dir checkpoints``.

Teacher forcing with label smoothing, Adam with warmup then inverse-sqrt or cosine decay, gradient
clipping, early stopping on validation BLEU (greedy decodes, sacrebleu), a wall-clock budget that stops
gracefully and keeps the best weights, then test BLEU / exact match with beam search and one
checkpoint (contract 1) with the tokenizers inside. Defaults come from a per-model recipe table
(``training.translate_flags``, with the command line). ``--device`` and ``--amp [bf16|fp16]`` choose
where and how it computes (on CUDA or the CPU); under ``torchrun`` it trains data-parallel (the loop
lives in ``training.translate_loop``, the settings' checks in ``training.translate_config``, the data
and model in ``training.translate_setup``). After every epoch it writes ``<name>.resume.pt``, which
``--resume`` (and a torchrun restart, by itself) continues bit for bit (``training.translate_resume``).
A run whose loss or weights go NaN or inf stops there with one line naming the epoch and step and what
to try (exit status 2), and writes nothing from those weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training import translate_loop
from training.cli import run_trainer
from training.translate_config import TranslateConfig, check_config, new_config
from training.translate_flags import build_parser, given_values
from training.translate_resume import resumed_config


def resolve_config(args: argparse.Namespace) -> TranslateConfig:
    """BASE < model recipe < preset < explicit command-line values (``new_config``); on ``--resume``, the
    interrupted run's settings < the command line's (``resumed_config``). Checked before any data is
    read."""
    given = given_values(args)
    cfg = resumed_config(args.resume, given) if args.resume else new_config(given)
    check_config(cfg, name_given="name" in given)
    return cfg


def train(args: argparse.Namespace | list[str] | None = None) -> Path:
    """Run a full training from parsed arguments (or an argv list); returns the checkpoint path."""
    if not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(args)
    return translate_loop.run(resolve_config(args))


def main(argv: list[str] | None = None) -> int:
    return run_trainer(lambda: train(argv))


if __name__ == "__main__":
    raise SystemExit(main())
