"""Train an image classifier from the registry: ``python -m training.classify --model resnet18``.

Flags left unset come from the family's recipe (``RECIPES``), tuned so every family reaches >= 95%
validation accuracy on the bundled digits on a CPU; a classifier of the user's own, registered by a
module that ``--models-from`` imports, trains with ``DEFAULT_RECIPE``. Runs under ``torchrun`` as
data-parallel training (DistributedDataParallel, gloo on CPU / nccl on CUDA; only rank 0 writes files).
Writes ``<output-dir>/<name>.pt`` (contract 1), ``<name>.metrics.jsonl``, ``<name>.curves.png`` and,
after every epoch, ``<name>.resume.pt`` (optimizer, scheduler and epoch for ``--resume``); an earlier
run's metrics and resume state under the same name are replaced at the new run's first epoch's end,
its checkpoint only by the new one (``training.tracking.MetricsLogger``). A run whose loss or weights go NaN or inf stops there with one
line naming the epoch and step and what to try (exit status 2), and writes nothing from those weights.
An attempt ``torchrun --max-restarts`` starts after a process died resumes from the resume state its own
torchrun job's interrupted attempt wrote, never an earlier job's (``classify_loop.restarted``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kiln.cli import HelpFormatter
from training.checkpoint import load_checkpoint
from training.cli import run_trainer
from training.data.augment import AugmentConfig, default_augment
from training.data.images import DATASETS, DataSpec
from training.flags import check_bool_model_args, check_minimum, check_positive, check_seed
from training.models import build_model, get_entry, list_models
from training.models.layers import smallest_input_side, takes_input_side
from training.models.registry import ensure_registered, env_modules, import_modules
from training.optim import OPTIMIZERS
from training.resume import load_resume, resume_path, resumed_amp
from training.runtime import (
    DEFAULT_DIST_TIMEOUT_S,
    add_amp_flags,
    amp_choice,
    check_dist_timeout,
)
from training.tracking import check_output_dir

log = logging.getLogger("training.classify")


@dataclass(frozen=True)
class Recipe:
    """A family's default hyper-parameters; ``model_args`` only apply where the config has the field."""

    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "nesterov"
    lr: float = 0.05
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.05
    model_args: dict[str, Any] = field(default_factory=dict)


# Zoo family (registry-name prefix) -> recipe for 32x32 digits on a CPU; the longest matching prefix wins.
# fmt: off
RECIPES: dict[str, Recipe] = {
    "lenet": Recipe(epochs=20, optimizer="adamw", lr=3e-3, weight_decay=1e-4),
    "alexnet": Recipe(epochs=15, optimizer="adamw", lr=1e-3, weight_decay=1e-4,
                      model_args={"small_input": True, "width_mult": 0.5}),
    "vgg": Recipe(epochs=15, lr=0.05, model_args={"width_mult": 0.25}),
    # The ImageNet stems (stride 4 before the first block) cost 1/16 of the CIFAR ones and lose nothing
    # on digits, whose scans are 8x8 before upscaling.
    "nin": Recipe(epochs=15, optimizer="adamw", lr=2e-3, weight_decay=1e-4, model_args={"small_input": False}),
    "googlenet": Recipe(epochs=12, optimizer="adamw", lr=2e-3, weight_decay=0.05, model_args={"small_input": False}),
    "resnet": Recipe(epochs=15, optimizer="adamw", lr=2e-3, weight_decay=0.05, model_args={"small_input": False}),
    "densenet": Recipe(epochs=12, optimizer="adamw", lr=2e-3, weight_decay=0.05, model_args={"small_input": False}),
}
# fmt: on
# Models without a family recipe (a user's own, --models-from): AdamW as most families here train, less
# sensitive than SGD at 0.05 to an architecture it was not tuned for.
DEFAULT_RECIPE = Recipe(epochs=15, optimizer="adamw", lr=2e-3, weight_decay=0.05)
DEFAULT_OUTPUT_DIR = "checkpoints"


@dataclass
class TrainConfig:
    """Every knob of a run; ``None`` means "from the recipe" (resolved by ``resolve``)."""

    model: str | None = None  # default: the --resume / --finetune file's model, else resnet18
    models_from: list[str] = field(default_factory=list)  # modules imported first: they register models
    # The data fields (DATA_FLAGS): None means DataSpec's default, or on --resume the interrupted run's.
    dataset: str | None = None
    data_path: str | None = None
    image_size: int | None = None
    channels: int | None = None
    val_fraction: float | None = None
    limit_train: int | None = None
    limit_val: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    warmup_epochs: float | None = None
    label_smoothing: float | None = None
    clip_grad_norm: float | None = None
    # bf16 | fp16 (True: fp16, the switch it was) | False: float32; None: float32, or on --resume the
    # interrupted run's precision. ``resolve`` leaves bf16, fp16 or None (float32).
    amp: str | bool | None = None
    seed: int | None = None  # a data flag too: it draws the split, the initial weights and the order
    resume: str | None = None
    early_stopping: int | None = None  # None: off, or on --resume the interrupted run's patience
    finetune: str | None = None
    output_dir: str | None = None  # None: DEFAULT_OUTPUT_DIR, or on --resume the resume file's directory
    name: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    dist_timeout: float | None = None  # seconds a torchrun collective waits; None: torch's default
    augment: bool | None = None  # None: on, or on --resume the interrupted run's choice
    hflip: bool | None = None  # None: the dataset's default (on for CIFAR-10 only)
    debug_rank_hashes: str | None = None
    progress: bool = True


def family_of(model: str) -> str:
    """The recipe family of a registry name: its longest prefix in ``RECIPES`` (``resnet18`` -> ``resnet``);
    a model a user module registered is its own family, whatever its name starts with."""
    if not get_entry(model).in_zoo:
        return model
    matches = [family for family in RECIPES if model.startswith(family)]
    return max(matches, key=len) if matches else model


def recipe_for(model: str) -> Recipe:
    """The family's recipe, or ``DEFAULT_RECIPE`` for a family without one."""
    return RECIPES.get(family_of(model), DEFAULT_RECIPE)


def recipe_model_args(model: str) -> dict[str, Any]:
    """The recipe's constructor arguments that ``model``'s config takes (a family's recipe may set
    fields only some of its members have)."""
    fields = {f.name for f in dataclasses.fields(get_entry(model).config_cls)}
    return {k: v for k, v in recipe_for(model).model_args.items() if k in fields}


def source_models(config: TrainConfig) -> list[tuple[str, str]]:
    """(flag, model name) of each file the run starts from: ``--resume`` state, ``--finetune`` checkpoint."""
    held = []
    if config.resume:
        state = load_resume(config.resume, mmap=True)
        modules = (state.get("train_config") or {}).get("models_from") or []
        ensure_registered(state["model_name"], ",".join(modules) or None)  # named, never imported
        held.append((f"--resume {config.resume}", state["model_name"]))
    if config.finetune:
        ckpt = load_checkpoint(config.finetune)
        if ckpt["task"] != "classify":
            raise ValueError(f"--finetune {config.finetune}: a {ckpt['task']} checkpoint, not a classifier")
        ensure_registered(ckpt["model"]["name"], ckpt["model"].get("module"))
        check_finetune_args(config.finetune, ckpt)
        held.append((f"--finetune {config.finetune}", ckpt["model"]["name"]))
    return held


def check_finetune_args(path: str, ckpt: dict[str, Any]) -> None:
    """Refuse a ``--finetune`` checkpoint whose constructor arguments its model's config no longer has
    (a file from another Kiln, or of a user model whose config changed since), naming them, before any
    data is read: else a ``TypeError`` traceback from the config."""
    name, args = ckpt["model"]["name"], ckpt["model"]["args"]
    fields = {f.name for f in dataclasses.fields(get_entry(name).config_cls)}
    unknown = sorted(set(args) - fields)
    if unknown:
        raise ValueError(
            f"--finetune {path}: its {name} arguments {unknown} are not fields of {name}'s config here "
            f"(accepted: {sorted(fields)}); a checkpoint written by another version of the model's code"
        )


def check_resume_finetune(config: TrainConfig) -> None:
    """Refuse ``--finetune`` with ``--resume`` unless it names the file the interrupted run started from: a
    resumed run continues from its resume state's weights, so another ``--finetune`` would be silently
    ignored (and recorded in the checkpoint as where the weights came from)."""
    if not (config.resume and config.finetune):
        return
    saved = (load_resume(config.resume, mmap=True).get("train_config") or {}).get("finetune")
    if saved and (saved == config.finetune or Path(saved).resolve() == Path(config.finetune).resolve()):
        return
    started = f"started from --finetune {saved}" if saved else "started without --finetune"
    raise ValueError(
        f"--finetune {config.finetune} with --resume {config.resume}: a resumed run continues from its "
        f"resume state's weights (that run {started}); drop --finetune to resume it, or --resume to "
        f"finetune {config.finetune} in a new run"
    )


def run_modules(config: TrainConfig) -> list[str]:
    """``--models-from`` (with ``KILN_MODELS_FROM``'s), each once: the modules this run imports and its
    resume state and checkpoint record. A ``--resume`` imports none of the interrupted run's by itself
    (a file's record is named in the refusal, never imported: ``ensure_registered``)."""
    return list(dict.fromkeys(config.models_from))


def model_of(config: TrainConfig) -> str:
    """``--model``, else the model of the file the run starts from, else resnet18; a ``--model`` that
    differs from that file's is an error (it would name, and overwrite, one model with another's weights)."""
    held = source_models(config)
    model = config.model or (held[0][1] if held else "resnet18")
    for flag, name in held:
        if name != model:
            raise ValueError(f"{flag} holds {name!r} but --model is {model!r}")
    if model not in list_models():
        raise ValueError(
            f"unknown model {model!r}; choose a classifier from {list_models('classify')}, or register "
            "your own in a module that --models-from imports"
        )
    task = get_entry(model).task
    if task != "classify":
        raise ValueError(
            f"--model {model!r} is a {task} model, not a classifier; choose from {list_models('classify')}"
        )
    return model


AT_LEAST_ONE = ("epochs", "batch_size", "limit_train", "limit_val")
# Flags that may be 0 (off, none) but not negative.
ZERO_OR_MORE = ("weight_decay", "warmup_epochs", "early_stopping", "clip_grad_norm")
# Config fields the data sets (the dataset's classes, --channels): a --model-arg for them is refused.
DATA_MODEL_ARGS = {"num_classes": "the dataset's classes", "in_channels": "--channels"}


def check_ranges(out: TrainConfig) -> None:
    """Numeric flags outside their range, named before any data is read (a negative --limit-train would
    drop images from the end, a negative --clip-grad-norm turn the gradient around, an infinite --lr
    write a checkpoint of NaN weights)."""
    check_seed(out.seed)
    check_dist_timeout(out.dist_timeout)
    check_minimum(1, {name: getattr(out, name) for name in AT_LEAST_ONE})
    check_positive({"lr": out.lr})
    check_minimum(0, {name: getattr(out, name) for name in ZERO_OR_MORE})
    if not 0 <= out.label_smoothing < 1:
        raise ValueError(f"--label-smoothing must be in [0, 1), got {out.label_smoothing}")
    fields = {f.name for f in dataclasses.fields(get_entry(out.model).config_cls)}
    unknown = sorted(set(out.model_args) - fields)
    if unknown:
        raise ValueError(
            f"--model-arg {', '.join(unknown)}: not a field of {out.model}; accepted: {sorted(fields)}"
        )
    check_bool_model_args(get_entry(out.model).config_cls, out.model_args)
    owned = [
        f"{key} comes from {DATA_MODEL_ARGS[key]}" for key in sorted(out.model_args) if key in DATA_MODEL_ARGS
    ]
    if owned and not out.resume:  # on --resume, check_resume_model_args compares them with the file's
        raise ValueError(f"--model-arg {'; '.join(owned)}, not from --model-arg")


def resolve(config: TrainConfig) -> TrainConfig:
    """Import the ``--models-from`` modules, fill every ``None`` hyper-parameter and data flag from the
    ``--resume`` file, else the model's recipe or ``DataSpec``'s defaults, and check the choices."""
    config = dataclasses.replace(config, models_from=run_modules(config))
    import_modules(config.models_from)
    check_resume_finetune(config)
    model = model_of(config)
    config = dataclasses.replace(config, **resume_defaults(config))
    data = {key: value for key, value in DATA_DEFAULTS.items() if getattr(config, key) is None}
    recipe = recipe_for(model)
    filled = {
        f.name: getattr(recipe, f.name)
        for f in dataclasses.fields(Recipe)
        if f.name != "model_args" and getattr(config, f.name) is None
    }
    augment = True if config.augment is None else config.augment
    out = dataclasses.replace(
        config,
        model=model,
        **filled,
        **data,
        name=config.name or model,
        augment=augment,
        early_stopping=config.early_stopping or 0,
        amp=amp_choice(config.amp),
        output_dir=config.output_dir or default_output_dir(config),
    )
    if out.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {out.optimizer!r}; choose from {OPTIMIZERS}")
    if out.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {out.dataset!r}; choose from {DATASETS}")
    if out.dataset == "digits" and out.data_path:  # else the path would be silently ignored
        formats = ", ".join(d for d in DATASETS if d != "digits")
        raise ValueError(
            f"--data-path {out.data_path} needs --dataset naming its format ({formats}); "
            "the default dataset, digits, is bundled with scikit-learn and reads no files"
        )
    check_ranges(out)
    check_resume_model_args(out)
    check_image_size(out)
    check_output_dir(out.output_dir)
    return out


def architecture_args(config: TrainConfig) -> dict[str, Any]:
    """The constructor arguments the run builds its model from, but for the classes and channels the
    data sets: the ``--resume`` file's, else the ``--finetune`` checkpoint's or the recipe's, with
    ``--model-arg`` over them (``classify_loop.build_classifier``)."""
    if config.resume:
        return dict(load_resume(config.resume, mmap=True)["model_args"])
    if config.finetune:
        base = load_checkpoint(config.finetune)["model"]["args"]
    else:
        base = recipe_model_args(config.model)
    return {**base, **config.model_args}


def check_image_size(config: TrainConfig) -> None:
    """Refuse an ``--image-size`` the model's kernels and pooling reduce to nothing, naming the smallest
    it takes, before any data is read (else a PyTorch traceback at the first batch). The model is built
    on the meta device: shapes only, no weights, no arithmetic."""
    if config.image_size < 1:
        return  # the data loader names it
    arch = {k: v for k, v in architecture_args(config).items() if k not in DATA_MODEL_ARGS}
    with torch.device("meta"):
        model = build_model(config.model, **arch, num_classes=2, in_channels=1)
    try:
        if takes_input_side(model, 1, config.image_size):
            check_logits(config.model, model, config.image_size)
            return
        smallest = smallest_input_side(model, 1)
    except (NotImplementedError, TypeError) as exc:  # an op without a meta kernel: the real run decides
        log.debug("%s: no shape check on the meta device (%s)", config.model, exc)
        return
    if smallest is not None:
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(arch.items())) or "its defaults"
        raise ValueError(
            f"--image-size {config.image_size}: {config.model} ({shown}) needs images of at least "
            f"{smallest}x{smallest}, its kernels and pooling leave nothing of smaller ones; use "
            f"--image-size {smallest} or more"
        )


def check_logits(name: str, model: torch.nn.Module, side: int) -> None:
    """Refuse a model whose eval forward does not give ``(B, num_classes)`` logits (a head left 4-D, a
    class count not taken from ``num_classes``, a tuple), before any data is read: else a traceback from
    the loss at the first batch, or a head that does not fit the dataset's classes."""
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, 1, side, side, device=next(model.parameters()).device))
    except Exception as exc:  # noqa: BLE001 - only what runs on the meta device is judged here
        log.debug("%s: no logits check on the meta device (%s)", name, exc)
        return
    finally:
        model.train()
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (2, 2):
        raise ValueError(
            f"--model {name}: its eval forward gives {shape} for 2 images of 2 classes (num_classes=2); a "
            "classifier must return logits of shape (B, num_classes), its head built from config.num_classes"
        )


# Flags a resumed run keeps: the optimizer and schedule it restores were built with them.
RESUME_FIXED = ("batch_size", "optimizer", "lr", "weight_decay", "schedule", "warmup_epochs")
# Flags a resumed run takes from the file when unset (not from the recipe), so it ends where the
# interrupted run would have; a value given on the command line wins (--epochs 30 lengthens the run,
# and the schedule is then laid over the new length).
RESUME_INHERITED = (
    "epochs",
    "amp",  # else a resumed mixed-precision run silently continues in float32
    "label_smoothing",
    "clip_grad_norm",
    "hflip",
    "augment",
    "early_stopping",
    "name",  # else the run continues under the model's name, beside the interrupted run's files
)
# Flags that choose the data (DataSpec's fields, --seed among them): a resumed run takes the interrupted
# run's when unset, from its resume file's ``data``; a value given that differs is refused before the
# data is read (classify_loop.check_resumable), since the run must go on with the same split and order.
DATA_FLAGS = tuple(f.name for f in dataclasses.fields(DataSpec))
DATA_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DataSpec)}


def default_output_dir(config: TrainConfig) -> str:
    """Where an unset ``--output-dir`` writes: beside the ``--resume`` state (its checkpoint, metrics
    and resume state continue the interrupted run's files, wherever it is resumed from), else
    ``DEFAULT_OUTPUT_DIR``."""
    return str(resume_path(config.resume).parent) if config.resume else DEFAULT_OUTPUT_DIR


def resume_defaults(config: TrainConfig) -> dict[str, Any]:
    """On ``--resume``: the interrupted run's values of the ``DATA_FLAGS``, ``RESUME_FIXED`` and
    ``RESUME_INHERITED`` flags left unset (not the recipe's). A ``RESUME_FIXED`` flag set to another value
    is an error, not ignored: the restored optimizer keeps its learning rate and weight decay, another
    optimizer cannot load its state, and the schedule counts steps of the old batch size. Resume files
    written before they held their config skip the check."""
    if not config.resume:
        return {}
    state = load_resume(config.resume, mmap=True)
    held = state["data"]
    data = {key: held[key] for key in DATA_FLAGS if getattr(config, key) is None and key in held}
    saved = state.get("train_config")
    if saved is None:
        return data
    differ = [
        f"--{key.replace('_', '-')} {getattr(config, key)} (the run used {saved[key]})"
        for key in RESUME_FIXED
        if getattr(config, key) is not None and getattr(config, key) != saved[key]
    ]
    if differ:
        raise ValueError(
            f"--resume {config.resume}: {', '.join(differ)}: a resumed run continues with its own "
            "optimizer, learning-rate schedule and batch size; leave these flags unset"
        )
    inherited = (*RESUME_FIXED, *RESUME_INHERITED)
    values = {key: saved[key] for key in inherited if getattr(config, key) is None and key in saved}
    if "amp" in values:
        values["amp"] = resumed_amp(state)
    return {**data, **values}


def check_resume_model_args(config: TrainConfig) -> None:
    """A ``--model-arg`` on ``--resume`` must match the resume file's architecture: the run rebuilds the
    model from that file, so a different value would be silently ignored (the same value is fine)."""
    if not (config.resume and config.model_args):
        return
    held = load_resume(config.resume, mmap=True)["model_args"]
    differ = [
        f"{key}={value!r} (the file has {held.get(key)!r})"
        for key, value in config.model_args.items()
        if _as_lists(value) != _as_lists(held.get(key))
    ]
    if differ:
        raise ValueError(
            f"--model-arg {', '.join(differ)} differs from --resume {config.resume}: a resumed run keeps "
            "the architecture it was started with; drop the --model-arg, or start a new run (--finetune "
            "to start from these weights)"
        )


def _as_lists(value: Any) -> Any:
    """``value`` with tuples as lists, so ``(1, 2)`` from the command line equals a stored ``[1, 2]``."""
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value


def augment_config(config: TrainConfig) -> AugmentConfig:
    """The run's augmentation: the dataset default, ``--hflip`` override, or none at all."""
    if not config.augment:
        return AugmentConfig.none()
    aug = default_augment(config.dataset)
    return aug if config.hflip is None else dataclasses.replace(aug, hflip=config.hflip)


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
        help="start a new run from this classifier checkpoint's weights: a head of another class count is "
        "new, and a first layer of other --channels is adapted (1 -> 3: its weights spread over the three, "
        "3 -> 1: summed); unset --channels is the checkpoint's, the other data flags and the "
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
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, help="random horizontal flips")


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
        "--optimizer, --lr, --weight-decay, --schedule, --warmup-epochs, --model-arg, the data flags "
        "(--dataset, --data-path, --image-size, --channels, --val-fraction, --limit-train, --limit-val) "
        "and --seed come from the file, and a value that differs from the file's is an error; unset "
        "--epochs, --label-smoothing, --clip-grad-norm, --early-stopping, --hflip, --augment, --amp and "
        "--name come from the file too (a given --epochs changes the run's length), and an unset "
        "--output-dir is the file's directory; data whose classes or images changed since is refused",
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
        "ends, and its checkpoint only when it writes its own",
    )
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    g.add_argument(
        "--dist-timeout",
        type=float,
        metavar="SECONDS",
        help="under torchrun, how long a rank waits in a collective (and to join the process group) for "
        "the others before the run ends with an error line naming this flag: a hung or stopped rank "
        "(default: torch's, "
        f"{DEFAULT_DIST_TIMEOUT_S['gloo']:g} s on CPU (gloo), {DEFAULT_DIST_TIMEOUT_S['nccl']:g} s on CUDA "
        "(nccl), where torch's watchdog may end the process first); the resume state of the last "
        "finished epoch stays whole",
    )
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
    from training.classify_loop import run  # the loop imports this module's config and recipes

    return run(resolve(to_config(args_or_config)))


def main(argv: list[str] | None = None) -> int:
    return run_trainer(lambda: train(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
