"""Train every classifier family with its default recipe on digits and report a Markdown table.

``python -m training.zoo [--models lenet resnet18] [--output report.md]``: one representative per
family in ``training.classify_config.RECIPES`` (the first registered name of that family), each trained by
``training.classify.train`` exactly as ``python -m training.classify --model NAME`` would.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from kiln.cli import HelpFormatter
from training.checkpoint import load_checkpoint
from training.classify import train
from training.classify_config import RECIPES, TrainConfig, family_of
from training.classify_resolve import resolve
from training.models import list_models
from training.tracking import check_output_dir

log = logging.getLogger("training.zoo")
COLUMNS = ("family", "model", "val accuracy", "epochs", "train time (s)", "parameters")


def default_models() -> list[str]:
    """One registered classifier per recipe family, the first name in sorted order (e.g. resnet18)."""
    chosen: dict[str, str] = {}
    for name in list_models("classify"):
        chosen.setdefault(family_of(name), name)
    return [chosen[f] for f in RECIPES if f in chosen] + [m for f, m in chosen.items() if f not in RECIPES]


def train_one(model: str, output_dir: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Train ``model`` with its recipe (plus overrides) and return its table row."""
    path = train(TrainConfig(model=model, output_dir=str(output_dir), **overrides))
    metrics = load_checkpoint(path)["metrics"]
    return {
        "family": family_of(model),
        "model": model,
        "val accuracy": f"{metrics['val_accuracy']:.4f}",
        "epochs": metrics["epochs"],
        "train time (s)": f"{metrics['train_time_s']:.1f}",
        "parameters": f"{metrics['params']:,}",
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.zoo",
        description="Train each classifier family with its default recipe on digits; print a Markdown table.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--models", nargs="+", help="registry names (default: one per family)")
    p.add_argument("--output", type=Path, help="also write the table to this Markdown file")
    p.add_argument("--output-dir", type=Path, default=Path("checkpoints/zoo"), help="where checkpoints go")
    p.add_argument("--epochs", type=int, help="override every recipe's epochs (quick checks)")
    p.add_argument("--limit-train", type=int, help="train on the first N images only (quick checks)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    models = args.models or default_models()
    unknown = sorted(set(models) - set(list_models("classify")))
    if unknown:
        print(
            f"error: not registered classifiers: {unknown}; known: {list_models('classify')}", file=sys.stderr
        )
        return 2
    overrides = {"epochs": args.epochs, "limit_train": args.limit_train, "progress": args.progress}
    try:  # every model's flags and both outputs checked before the first of many trainings
        for model in models:
            resolve(TrainConfig(model=model, output_dir=str(args.output_dir), **overrides))
        if args.output:
            check_output_file(args.output)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = []
    for index, model in enumerate(models, 1):
        log.info("[%d/%d] training %s", index, len(models), model)
        rows.append(train_one(model, args.output_dir, overrides))
    table = markdown_table(rows)
    print(table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("# Kiln classifier zoo on digits\n\n" + table, encoding="utf-8")
    return 0


def check_output_file(path: Path) -> None:
    """Refuse an ``--output`` that is a directory or lies where no file can be written."""
    if path.is_dir():
        raise ValueError(f"--output {path} is a directory, not a file")
    try:
        check_output_dir(path.parent)
    except ValueError as exc:
        raise ValueError(str(exc).replace("--output-dir", "--output's directory", 1)) from None


if __name__ == "__main__":
    raise SystemExit(main())
