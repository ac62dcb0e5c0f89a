"""The config a classifier run trains with, from the one its flags give (``resolve``): the
``--models-from`` modules imported, each unset hyper-parameter and data flag filled from the ``--resume``
file (``resume_defaults``: the flags a resumed run keeps, and those it inherits), else from the model's
recipe or ``DataSpec``'s defaults, and every choice checked before any data is read: the model and the
files the run starts from, ranges, ``--model-arg``, an ``--image-size`` the model takes and the shape of
its logits, the output directory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import torch

from training.checkpoint import load_checkpoint
from training.classify_config import (
    DATA_DEFAULTS,
    DATA_FLAGS,
    DEFAULT_OUTPUT_DIR,
    Recipe,
    TrainConfig,
    recipe_for,
    recipe_model_args,
)
from training.classify_epoch import describe_output
from training.classify_finetune import check_finetune_args, check_resume_finetune
from training.data.images import DATASETS, data_place
from training.flags import check_model_args, check_run_ranges
from training.mixed_precision import amp_choice
from training.models import build_model, get_entry, list_models
from training.models.layers import smallest_input_side, takes_input_side
from training.models.registry import ensure_registered, import_modules
from training.optim import OPTIMIZERS
from training.resume import (
    changed_model_args,
    check_resumed_epochs,
    load_resume,
    resume_path,
    resumed_amp,
    resumed_output_dir,
)
from training.tracking import check_name, check_output_dir

log = logging.getLogger("training.classify")  # the classifier's lines, whichever of its modules says them


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
    check_run_ranges(out, AT_LEAST_ONE, ZERO_OR_MORE)
    check_model_args(out.model, get_entry(out.model).config_cls, out.model_args)
    owned = [
        f"{key} comes from {DATA_MODEL_ARGS[key]}" for key in sorted(out.model_args) if key in DATA_MODEL_ARGS
    ]
    if owned and not out.resume:  # on --resume, check_resume_model_args compares them with the file's
        raise ValueError(f"--model-arg {'; '.join(owned)}, not from --model-arg")


def resolve(config: TrainConfig) -> TrainConfig:
    """Import the ``--models-from`` modules, fill every ``None`` hyper-parameter and data flag from the
    ``--resume`` file, else the model's recipe or ``DataSpec``'s defaults, and check the choices."""
    given = config = dataclasses.replace(config, models_from=run_modules(config))
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
        output_dir=config.output_dir or default_output_dir(config, config.name or model),
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
    # Absolute, as the run records it (resume state, train_config): --resume finds the data from any
    # directory. An older resume state's relative path is read from this one, as it always was.
    if out.data_path:
        out = dataclasses.replace(out, data_path=data_place(out.data_path))
    # The --finetune checkpoint alike: the file the weights came from, as the checkpoint's train_config
    # and resume state name it (a relative one was read from the directory the run started in, so its
    # --resume from another directory refused the very file, given from there, as another).
    if out.finetune:
        out = dataclasses.replace(out, finetune=os.path.abspath(os.path.expanduser(out.finetune)))
    check_ranges(out)
    check_augment_flags(given, out)
    if out.resume:  # never fewer than the interrupted run trained
        check_resumed_epochs(out.resume, out.epochs)
    check_resume_model_args(out)
    check_image_size(out)
    check_output_dir(out.output_dir, out.name)
    if not out.resume or given.name:  # a resumed run's inherited name is the interrupted run's, let be
        check_name(out.name)
    return out


def check_augment_flags(given: TrainConfig, out: TrainConfig) -> None:
    """Refuse ``--hflip`` where augmentation is off (``--no-augment``, given or the resumed run's): flips
    are one of the augmentations it turns off, so the run trained without them while its checkpoint's
    ``train_config`` recorded ``hflip: true``."""
    if not (given.hflip and not out.augment):  # a --no-augment over a run's inherited flips is meant
        return
    why = "--no-augment" if given.augment is False else f"--resume {out.resume} trained with --no-augment"
    raise ValueError(
        f"--hflip with augmentation off ({why}): flips are one of the augmentations it turns off, so they "
        "would not run; drop --hflip, or train with --augment (the dataset's augmentation plus flips)"
    )


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
            check_batch_of_one(config, model)
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


def check_batch_of_one(config: TrainConfig, model: torch.nn.Module, world_size: int | None = None) -> None:
    """Refuse batches of one image (``--batch-size 1``, or ``--limit-train`` no larger than the
    ``world_size`` processes sharing it, one image each: torchrun's ``WORLD_SIZE``) that the model's
    BatchNorm cannot train on at ``--image-size``: its last feature maps are 1x1 there, one value per
    channel, and the first step failed with PyTorch's "Expected more than 1 value per channel"."""
    world = world_size or int(os.environ.get("WORLD_SIZE") or 1)
    ones = [(flag, 1, "") for flag in ("--batch-size",) if config.batch_size == 1]
    limit = config.limit_train
    if limit is not None and 1 <= limit <= world:  # each rank's share, ceil(limit / world), is one image
        shared = f" (each of the {world} processes gets one)" if world > 1 else ""
        ones.append(("--limit-train", limit, shared))
    if not ones or takes_input_side(model, 1, config.image_size, batch=1):
        return
    smallest = smallest_input_side(model, 1, batch=1)
    larger = f", or --image-size {smallest} or more" if smallest is not None else ""
    flag, value, shared = ones[0]
    fewest = world + 1 if flag == "--limit-train" else 2
    raise ValueError(
        f"{flag} {value}: {config.model} normalizes over the batch (BatchNorm), and at --image-size "
        f"{config.image_size} a batch of one image{shared} leaves it a single value per channel; use "
        f"{flag} {fewest} or more{larger}"
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
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else describe_output(out)  # a dict: its keys
    if shape != (2, 2):
        raise ValueError(
            f"--model {name}: its eval forward gives {shape} for 2 images of 2 classes (num_classes=2); a "
            "classifier must return logits of shape (B, num_classes), its head built from config.num_classes"
        )


# Flags a resumed run keeps: the optimizer and schedule it restores were built with them, and stepped
# on that loss (--label-smoothing) and gradients clipped so (--clip-grad-norm).
RESUME_FIXED = (
    "batch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "schedule",
    "warmup_epochs",
    "label_smoothing",
    "clip_grad_norm",
)
# Flags a resumed run takes from the file when unset (not from the recipe), so it ends where the
# interrupted run would have; a value given on the command line wins (--epochs 30 lengthens the run,
# and the schedule is then laid over the new length).
RESUME_INHERITED = (
    "epochs",
    "amp",  # else a resumed mixed-precision run silently continues in float32
    "hflip",
    "augment",
    "early_stopping",
    "name",  # else the run continues under the model's name, beside the interrupted run's files
)


def default_output_dir(config: TrainConfig, name: str) -> str:
    """Where an unset ``--output-dir`` writes for a run named ``name``: where the ``--resume`` state's
    run wrote (its checkpoint, metrics and resume state continue the interrupted run's files, wherever
    it is resumed from: the state's folder less the folders ``name`` holds, ``resumed_output_dir``),
    else ``DEFAULT_OUTPUT_DIR``. The state's folder alone put a run named ``runs/a`` resumed from
    ``out/runs/a.resume.pt`` in ``out/runs/runs/``, beside its own files, which it never replaced. The
    directory the state recorded comes first, as the translator's: a state reached through a link
    (``--resume latest.resume.pt``) or a ``--name ../a`` wrote a second copy elsewhere."""
    if not config.resume:
        return DEFAULT_OUTPUT_DIR
    recorded = (load_resume(config.resume, mmap=True).get("train_config") or {}).get("output_dir")
    return resumed_output_dir(config.resume, name, recorded)


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
        return {**data, **older_state_defaults(config)}
    differ = [
        f"--{key.replace('_', '-')} {getattr(config, key)} (the run used {saved[key]})"
        for key in RESUME_FIXED
        if getattr(config, key) is not None and key in saved and getattr(config, key) != saved[key]
    ]
    if differ:
        raise ValueError(
            f"--resume {config.resume}: {', '.join(differ)}: a resumed run continues with its own "
            "optimizer, loss, gradient clipping, learning-rate schedule and batch size; leave these flags unset"
        )
    inherited = (*RESUME_FIXED, *RESUME_INHERITED)
    values = {key: saved[key] for key in inherited if getattr(config, key) is None and key in saved}
    if "amp" in values:
        values["amp"] = resumed_amp(state)
    return {**data, **values}


def older_state_defaults(config: TrainConfig) -> dict[str, Any]:
    """A resume state an older Kiln wrote (no ``train_config``, before 2026-12-04) holds the run's data and
    model but not its flags. Its name is its file's, ``<name>.resume.pt`` (else the run went on as the
    model's name, ``lenet.pt``: beside its own files, over another run's); the flags it does not record
    come from the recipe unless given again, and one warning names those left so."""
    state = resume_path(config.resume)
    # every flag a newer state would give the run (RESUME_INHERITED's too: an --amp run went on in float32)
    recorded = (*RESUME_FIXED, *(key for key in RESUME_INHERITED if key != "name"))
    unset = [f"--{key.replace('_', '-')}" for key in recorded if getattr(config, key) is None]
    if unset:
        log.warning(
            "--resume %s: written by an older Kiln, this resume state does not record the run's training "
            "flags: %s come from the model's recipe or Kiln's defaults; give them again as the run was "
            "started if it set them (a different value continues the run with it)",
            state,
            ", ".join(unset),
        )
    return {} if config.name else {"name": state.name[: -len(".resume.pt")]}


def check_resume_model_args(config: TrainConfig) -> None:
    """A ``--model-arg`` on ``--resume`` must match the resume file's architecture: the run rebuilds the
    model from that file, so a different value would be silently ignored (the same value is fine)."""
    if not (config.resume and config.model_args):
        return
    held = load_resume(config.resume, mmap=True)["model_args"]
    differ = [
        f"{key}={value!r} (the file has {was!r})"
        for key, value, was in changed_model_args(config.model_args, held)
    ]
    if differ:
        raise ValueError(
            f"--model-arg {', '.join(differ)} differs from --resume {config.resume}: a resumed run keeps "
            "the architecture it was started with; drop the --model-arg, or start a new run (--finetune "
            "to start from these weights)"
        )
