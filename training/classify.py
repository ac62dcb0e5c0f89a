"""Train an image classifier from the registry: ``python -m training.classify --model resnet18``.

Flags left unset come from the family's recipe (``training.classify_config.RECIPES``), tuned so every
family reaches >= 95% validation accuracy on the bundled digits on a CPU; a classifier of the user's
own, registered by a module that ``--models-from`` imports, trains with ``DEFAULT_RECIPE``. Runs under
``torchrun`` as data-parallel training (DistributedDataParallel, gloo on CPU / nccl on CUDA; only rank 0
writes files). Writes ``<output-dir>/<name>.pt`` (contract 1), ``<name>.metrics.jsonl``,
``<name>.curves.png`` and, after every epoch, ``<name>.resume.pt`` (optimizer, scheduler and epoch for
``--resume``); an earlier run's metrics and resume state under the same name are replaced at the new
run's first epoch's end, its checkpoint only by the new one (``training.tracking.MetricsLogger``). A run
whose loss or weights go NaN or inf stops there with one line naming the epoch and step and what to try
(exit status 2), and writes nothing from those weights. An attempt ``torchrun --max-restarts`` starts
after a process died resumes from the resume state its own torchrun job's interrupted attempt wrote,
never an earlier job's (``classify_loop.restarted``).

This module is the command: its flags (``build_parser``) and ``train``. The config is
``training.classify_config``'s, its resolution ``training.classify_resolve``'s, and the run
``training.classify_loop``'s.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
from pathlib import Path
from typing import Any

from kiln.cli import HelpFormatter
from training import classify_loop
from training.classify_config import DATA_DEFAULTS, DEFAULT_OUTPUT_DIR, DEFAULT_RECIPE, TrainConfig
from training.classify_resolve import resolve
from training.cli import run_trainer
from training.data.images import DATASETS
from training.dist_timeout import add_dist_timeout_flag
from training.mixed_precision import add_amp_flags
from training.models.registry import env_modules
from training.optim import OPTIMIZERS


def parse_model_arg(text: str) -> tuple[str, Any]:
    """``key=value`` with a Python literal value (``width=32``, ``small_input=False``), else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--model-arg expects key=value, got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.classify",
        description="Train an image classifier from the Kiln registry (unset flags come from the family recipe).",
        formatter_class=HelpFormatter,
    )
    _model_flags(p.add_argument_group("model"))
    _data_flags(p.add_argument_group("data"))
    _optimization_flags(p.add_argument_group("optimization"))
    _run_flags(p.add_argument_group("run"))
    return p


def _model_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--model",
        help="registry name, e.g. lenet or resnet18, or one a --models-from module registers (default: the "
        "--resume/--finetune file's, else resnet18)",
    )
    default = DEFAULT_RECIPE
    g.add_argument(
        "--models-from",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first, so that the classifiers it registers with "
        "training.models.register_model can be trained (repeatable; also KILN_MODELS_FROM, comma-separated; "
        "the module's directory must be on PYTHONPATH); they train with the default recipe: "
        f"{default.epochs} epochs, {default.optimizer} lr {default.lr}, weight decay {default.weight_decay}, "
        f"{default.schedule} schedule, batch size {default.batch_size}",
    )
    g.add_argument(
        "--model-arg",
        action="append",
        default=[],
        type=parse_model_arg,
        metavar="KEY=VALUE",
        help="override a model config field (repeatable); with --resume, only the file's own values",
    )
    g.add_argument(
        "--finetune",
        help="start a new run from this classifier checkpoint's weights: the head's rows follow the class "
        "names (a class the checkpoint's labels have keeps its row, another's is new), a first layer of "
        "other --channels is adapted (1 -> 3: its weights spread over the three, 3 -> 1: summed); unset "
        "--channels is the checkpoint's, the other data flags and the "
        "hyper-parameters (epochs, lr...) are a new run's (the family recipe); with --resume, only the file "
        "the interrupted run started from",
    )


def _data_flags(g: argparse._ArgumentGroup) -> None:
    resumed = "on --resume, the interrupted run's"
    g.add_argument("--dataset", choices=DATASETS, help=f"default: {DATA_DEFAULTS['dataset']}; {resumed}")
    g.add_argument("--data-path", help="local dataset directory (folder, cifar10, mnist, fashion-mnist)")
    g.add_argument("--image-size", type=int, help=f"default: {DATA_DEFAULTS['image_size']}; {resumed}")
    g.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        help="default: the dataset's own; on --finetune, the checkpoint's; on --resume, the interrupted run's",
    )
    g.add_argument("--val-fraction", type=float, help=f"default: {DATA_DEFAULTS['val_fraction']}; {resumed}")
    g.add_argument("--limit-train", type=int, help="use only the first N training images")
    g.add_argument("--limit-val", type=int, help="use only the first N validation images")
    g.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        help="the dataset's augmentation (default: on; on --resume, the interrupted run's choice)",
    )
    g.add_argument(
        "--hflip",
        action=argparse.BooleanOptionalAction,
        help="random horizontal flips, on or off in the dataset's augmentation (default: on for cifar10 "
        "only; --hflip with --no-augment is an error)",
    )


def _optimization_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="per process")
    g.add_argument("--optimizer", choices=[o for o in OPTIMIZERS if o != "adam"])
    g.add_argument("--lr", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--schedule", choices=("cosine", "step"))
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--clip-grad-norm", type=float, help="max gradient norm (unset or 0 = no clipping)")
    add_amp_flags(
        g,
        "float32; on --resume, the precision the interrupted run trained with",
        "float32, also on --resume of a run that trained with --amp",
    )
    g.add_argument(
        "--early-stopping",
        type=int,
        metavar="PATIENCE",
        help="stop after PATIENCE epochs without a better val accuracy; 0 = off (default: off; on --resume, "
        "the interrupted run's patience)",
    )


def _run_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--seed",
        type=int,
        help=f"draws the split, initial weights, order and augmentation, in [-2**63, 2**64) (default: "
        f"{DATA_DEFAULTS['seed']}; on --resume, the interrupted run's)",
    )
    g.add_argument(
        "--resume",
        help="continue from <name>.pt / <name>.resume.pt (optimizer, scheduler, epoch); unset --batch-size, "
        "--optimizer, --lr, --weight-decay, --schedule, --warmup-epochs, --label-smoothing, "
        "--clip-grad-norm, --model-arg, the data flags (--dataset, --data-path, --image-size, --channels, "
        "--val-fraction, --limit-train, --limit-val) and --seed come from the file, and a value that "
        "differs from the file's is an error; unset --epochs, --early-stopping, --hflip, --augment, --amp and "
        "--name come from the file too (a given --epochs lengthens the run, and is refused below the "
        "epochs it trained; a run with nothing left to train whose checkpoint is written is left as it "
        "is), and an unset --output-dir is the file's directory; data whose classes or images changed "
        "since is refused; data that moved is read at the new --data-path given, checked to hold the "
        "same classes and images per class",
    )
    g.add_argument(
        "--output-dir",
        help=f"where the checkpoint, metrics and plots go (default: {DEFAULT_OUTPUT_DIR}; on --resume, the "
        "resume file's directory)",
    )
    g.add_argument(
        "--name",
        help="output file stem (default: the model name; on --resume, the interrupted run's); a new run "
        "under an earlier run's name replaces that run's metrics and resume state when its first epoch "
        "ends, and its checkpoint only when it writes its own; refused while another run writes under it",
    )
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    add_dist_timeout_flag(g)
    g.add_argument("--debug-rank-hashes", metavar="DIR", help="each rank writes its final weights hash here")
    g.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar (none off a terminal)"
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = vars(args).copy()
    values["model_args"] = dict(values.pop("model_arg", []) or [])
    values["models_from"] = [*env_modules(), *(values.get("models_from") or [])]
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in values.items() if k in known})


def to_config(args_or_config: TrainConfig | argparse.Namespace | dict | list[str] | None) -> TrainConfig:
    """Accept a TrainConfig, parsed CLI args, a dict of TrainConfig fields, or an argv list."""
    if isinstance(args_or_config, TrainConfig):
        return args_or_config
    if args_or_config is None or isinstance(args_or_config, list):
        return config_from_args(build_parser().parse_args(args_or_config))
    if isinstance(args_or_config, argparse.Namespace):
        return config_from_args(args_or_config)
    if isinstance(args_or_config, dict):
        return TrainConfig(**args_or_config)
    raise TypeError(f"train() takes a TrainConfig, Namespace, dict or argv list, not {type(args_or_config)}")


def train(args_or_config: TrainConfig | argparse.Namespace | dict | list[str] | None = None) -> Path:
    """Train (or resume / finetune) one classifier and return the path of its checkpoint."""
    return classify_loop.run(resolve(to_config(args_or_config)))


def main(argv: list[str] | None = None) -> int:
    return run_trainer(lambda: train(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
