"""Train an image classifier from the registry: ``python -m training.classify --model resnet18``.

Flags left unset come from the family's recipe (``RECIPES``), tuned so every family reaches >= 95%
validation accuracy on the bundled digits on a CPU. Runs under ``torchrun`` as data-parallel training
(DistributedDataParallel, gloo on CPU / nccl on CUDA; only rank 0 writes files). Writes
``<output-dir>/<name>.pt`` (contract 1), ``<name>.metrics.jsonl``, ``<name>.curves.png`` and, after
every epoch, ``<name>.resume.pt`` (optimizer, scheduler and epoch for ``--resume``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from training.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from training.data.augment import AugmentConfig, Augmenter, default_augment
from training.data.images import (
    DATASETS,
    DataSpec,
    ImageDataset,
    channel_stats,
    data_info,
    make_splits,
    normalize,
)
from training.data.loader import eval_batches, train_batches
from training.models import build_model, get_entry, make_config
from training.optim import OPTIMIZERS, build_optimizer, build_scheduler
from training.tracking import EarlyStopping, MetricsLogger, plot_curves, read_metrics

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


# Family (registry-name prefix) -> recipe for 32x32 digits on a CPU; the longest matching prefix wins.
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
DEFAULT_RECIPE = Recipe()


@dataclass
class TrainConfig:
    """Every knob of a run; ``None`` means "from the recipe" (resolved by ``resolve``)."""

    model: str | None = None  # default: resnet18, or the --finetune checkpoint's model
    dataset: str = "digits"
    data_path: str | None = None
    image_size: int = 32
    channels: int | None = None
    val_fraction: float = 0.2
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
    amp: bool = False
    seed: int = 0
    resume: str | None = None
    early_stopping: int = 0
    finetune: str | None = None
    output_dir: str = "checkpoints"
    name: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    augment: bool = True
    hflip: bool | None = None  # None: the dataset's default (on for CIFAR-10 only)
    debug_rank_hashes: str | None = None
    progress: bool = True


def family_of(model: str) -> str:
    """The recipe family of a registry name: its longest prefix in ``RECIPES`` (``resnet18`` -> ``resnet``)."""
    matches = [family for family in RECIPES if model.startswith(family)]
    return max(matches, key=len) if matches else model


def recipe_for(model: str) -> Recipe:
    """The family's recipe, or ``DEFAULT_RECIPE`` for a family without one."""
    return RECIPES.get(family_of(model), DEFAULT_RECIPE)


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill every ``None`` hyper-parameter from the model's recipe and check the choices."""
    model = config.model or (
        load_checkpoint(config.finetune)["model"]["name"] if config.finetune else "resnet18"
    )
    recipe = recipe_for(model)
    filled = {
        f.name: getattr(recipe, f.name)
        for f in dataclasses.fields(Recipe)
        if f.name != "model_args" and getattr(config, f.name) is None
    }
    out = dataclasses.replace(config, model=model, **filled, name=config.name or model)
    if out.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {out.optimizer!r}; choose from {OPTIMIZERS}")
    if out.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {out.dataset!r}; choose from {DATASETS}")
    for name in ("epochs", "batch_size"):
        if getattr(out, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(out, name)}")
    if out.lr <= 0:
        raise ValueError(f"--lr must be > 0, got {out.lr}")
    return out


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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", help="registry name, e.g. lenet or resnet18 (default: resnet18)")
    p.add_argument("--model-arg", action="append", default=[], type=parse_model_arg, metavar="KEY=VALUE",
                   help="override a model config field (repeatable)")  # fmt: skip
    p.add_argument("--dataset", default="digits", choices=DATASETS)
    p.add_argument("--data-path", help="local dataset directory (folder, cifar10, mnist, fashion-mnist)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--channels", type=int, choices=(1, 3), help="default: the dataset's own")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--limit-train", type=int, help="use only the first N training images")
    p.add_argument("--limit-val", type=int, help="use only the first N validation images")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--optimizer", choices=[o for o in OPTIMIZERS if o != "adam"])
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=("cosine", "step"))
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--clip-grad-norm", type=float)
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only; ignored on CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--resume", help="continue from <name>.pt / <name>.resume.pt (optimizer, scheduler, epoch)"
    )
    p.add_argument("--early-stopping", type=int, default=0, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a better val accuracy; 0 = off")  # fmt: skip
    p.add_argument("--finetune", help="start from this checkpoint; a classifier head of another shape is new")
    p.add_argument("--output-dir", default="checkpoints")
    p.add_argument("--name", help="output file stem (default: the model name)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--no-augment", dest="augment", action="store_false", help="train without augmentation")
    p.add_argument("--hflip", action=argparse.BooleanOptionalAction, help="random horizontal flips")
    p.add_argument("--debug-rank-hashes", metavar="DIR", help="each rank writes its final weights hash here")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = vars(args).copy()
    values["model_args"] = dict(values.pop("model_arg", []) or [])
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
    return run(resolve(to_config(args_or_config)))


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class Dist:
    """Where this process runs: its rank among ``world_size`` data-parallel workers and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class Run:
    """Everything one training run holds, passed between the small steps below."""

    config: TrainConfig
    dist: Dist
    spec: DataSpec
    train_ds: ImageDataset
    val_ds: ImageDataset
    mean: list[float]
    std: list[float]
    model_name: str
    model_args: dict[str, Any]
    module: nn.Module  # the bare model (what is saved and evaluated)
    model: nn.Module  # what trains: the module itself or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    augmenter: Augmenter
    use_amp: bool
    stopper: EarlyStopping
    start_epoch: int = 0
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    best_val: tuple[float, float] = (-1.0, float("inf"))  # (accuracy, loss)
    train_time_s: float = 0.0


def setup_dist(config: TrainConfig) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA) and pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available")
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank() if world > 1 else 0, world, device)


def all_sum(values: list[float], d: Dist) -> list[float]:
    """Sum per-rank counters over all ranks (identity in a single process)."""
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    if d.world_size > 1:
        dist.all_reduce(t)
    return t.tolist()


def build_classifier(config: TrainConfig, num_classes: int, channels: int) -> tuple[str, dict, nn.Module]:
    """Registry model from the recipe + ``--model-arg``, or from a ``--finetune`` checkpoint with a new head."""
    if config.finetune:
        return finetune_classifier(config, num_classes, channels)
    fields = {f.name for f in dataclasses.fields(get_entry(config.model).config_cls)}
    args = {k: v for k, v in recipe_for(config.model).model_args.items() if k in fields}
    args.update(num_classes=num_classes, in_channels=channels, **config.model_args)
    args = asdict(make_config(config.model, **args))
    return config.model, args, build_model(config.model, **args)


def finetune_classifier(config: TrainConfig, num_classes: int, channels: int) -> tuple[str, dict, nn.Module]:
    ckpt = load_checkpoint(config.finetune)
    if ckpt["task"] != "classify":
        raise ValueError(f"--finetune {config.finetune}: a {ckpt['task']} checkpoint, not a classifier")
    name = ckpt["model"]["name"]
    if config.model not in (None, name):
        raise ValueError(f"--finetune checkpoint holds {name!r} but --model is {config.model!r}")
    args = {**ckpt["model"]["args"], "num_classes": num_classes, "in_channels": channels, **config.model_args}
    args = asdict(make_config(name, **args))
    module = build_model(name, **args)
    skipped = load_matching_weights(module, ckpt["state_dict"])
    log.info("finetune from %s: new (re-initialised) tensors: %s", config.finetune, skipped or "none")
    return name, args, module


def load_matching_weights(module: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy every tensor whose name and shape match; return the names left at their fresh init."""
    own = module.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise ValueError("no weight of the checkpoint matches this model (another architecture?)")
    module.load_state_dict(matched, strict=False)
    return sorted(set(own) - set(matched))


def prepare(config: TrainConfig, d: Dist) -> Run:
    """Data, model, optimizer, schedule and augmentation for a fresh, finetuned or resumed run."""
    resume = load_resume(config.resume) if config.resume else None
    if config.finetune and config.channels is None:
        config = dataclasses.replace(
            config, channels=load_checkpoint(config.finetune)["preprocessing"]["channels"]
        )
    spec = DataSpec(config.dataset, config.data_path, config.image_size, config.channels, config.seed,
                    config.val_fraction, config.limit_train, config.limit_val)  # fmt: skip
    train_ds, val_ds = make_splits(spec)
    mean, std = channel_stats(train_ds.images)
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    if resume:
        name, args = resume["model_name"], resume["model_args"]
        module = build_model(name, **args)
        module.load_state_dict(resume["model"])
    else:
        name, args, module = build_classifier(config, len(train_ds.classes), train_ds.channels)
    module.to(d.device)
    model = (
        module
        if d.world_size == 1
        else DDP(module, device_ids=None if d.device.type == "cpu" else [d.device])
    )
    shard = train_batches(
        train_ds, config.batch_size, epoch=0, seed=config.seed, rank=d.rank, world_size=d.world_size
    )
    steps = len(shard)
    optimizer = build_optimizer(module, config.optimizer, config.lr, config.weight_decay)
    scheduler = build_scheduler(optimizer, schedule=config.schedule, warmup_steps=round(config.warmup_epochs * steps),
                                total_steps=steps * config.epochs)  # fmt: skip
    use_amp = config.amp and d.device.type == "cuda"
    if config.amp and not use_amp:
        log.warning("--amp is ignored on CPU: mixed precision needs CUDA; training in float32")
    run = Run(config, d, spec, train_ds, val_ds, mean, std, name, args, module, model, optimizer, scheduler,
              torch.amp.GradScaler("cuda", enabled=use_amp), Augmenter(augment_config(config), config.seed),
              use_amp, EarlyStopping(config.early_stopping))  # fmt: skip
    if resume:
        restore(run, resume)
    return run


def train_epoch(run: Run, epoch: int) -> tuple[float, float]:
    """One pass over this rank's shard; returns the all-reduced (mean loss, accuracy)."""
    cfg, d = run.config, run.dist
    run.model.train()
    run.augmenter.train()
    run.augmenter.generator.manual_seed(cfg.seed * 1_000_003 + epoch * d.world_size + d.rank)
    batches = train_batches(
        run.train_ds, cfg.batch_size, epoch=epoch, seed=cfg.seed, rank=d.rank, world_size=d.world_size
    )
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(
        batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not (cfg.progress and d.is_main)
    )
    for idx in bar:
        images = run.train_ds.images[idx].to(d.device).float() / 255.0  # (B, C, H, W) in [0, 1]
        labels = run.train_ds.labels[idx].to(d.device)  # (B,)
        x = normalize(run.augmenter(images), run.mean, run.std)  # (B, C, H, W)
        with torch.autocast(d.device.type, dtype=torch.float16, enabled=run.use_amp):
            logits = run.model(x)  # (B, classes)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if cfg.clip_grad_norm:
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad_norm)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        total_loss += loss.item() * len(idx)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(idx)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
    total_loss, correct, seen = all_sum([total_loss, correct, seen], d)
    return total_loss / seen, correct / seen


@torch.no_grad()
def evaluate(run: Run, dataset: ImageDataset) -> tuple[float, float]:
    """All-reduced (mean cross-entropy, accuracy) on ``dataset``, without augmentation."""
    d = run.dist
    if d.world_size > 1:  # every rank evaluates the same weights and BatchNorm statistics
        for buffer in run.module.buffers():
            dist.broadcast(buffer, 0)
    run.module.eval()
    total_loss, correct = 0.0, 0
    for idx in eval_batches(dataset, 256, rank=d.rank, world_size=d.world_size):
        x = normalize(dataset.images[idx].to(d.device), run.mean, run.std)  # (B, C, H, W)
        labels = dataset.labels[idx].to(d.device)  # (B,)
        logits = run.module(x).float()  # (B, classes)
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(1) == labels).sum())
    total_loss, correct = all_sum([total_loss, correct], d)
    return total_loss / len(dataset), correct / len(dataset)


def resume_path(path: str | os.PathLike) -> Path:
    """``x.resume.pt`` itself, or the ``.resume.pt`` next to a final ``x.pt`` checkpoint."""
    path = Path(path)
    return path if path.name.endswith(".resume.pt") else path.with_name(f"{path.stem}.resume.pt")


def load_resume(path: str) -> dict[str, Any]:
    file = resume_path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--resume {path}: no resume state at {file}")
    return torch.load(file, map_location="cpu", weights_only=True)


def save_resume(run: Run, epoch: int) -> None:
    """After each epoch: weights, optimizer, scheduler, best-so-far and epoch, as plain tensors/dicts."""
    state = {
        "epoch": epoch, "model_name": run.model_name, "model_args": run.model_args,
        "model": run.module.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
        "best_state": run.best_state, "best_epoch": run.best_epoch, "best_val": list(run.best_val),
        "stopper": {"best": run.stopper.best, "bad_epochs": run.stopper.bad_epochs},
        "train_time_s": run.train_time_s, "data": asdict(run.spec),
    }  # fmt: skip
    save_checkpoint(state, Path(run.config.output_dir) / f"{run.config.name}.resume.pt")


def restore(run: Run, state: dict[str, Any]) -> None:
    if state["data"] != asdict(run.spec):
        raise ValueError(f"--resume: the data flags differ from the interrupted run's {state['data']}")
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    run.start_epoch, run.best_epoch, run.best_state = state["epoch"], state["best_epoch"], state["best_state"]
    run.best_val, run.train_time_s = tuple(state["best_val"]), state["train_time_s"]
    run.stopper.best, run.stopper.bad_epochs = state["stopper"]["best"], state["stopper"]["bad_epochs"]
    log.info("resuming %s after epoch %d", run.config.name, run.start_epoch)


def fit(run: Run) -> list[dict[str, Any]]:
    """The epoch loop: train, evaluate, log, keep the best weights, stop early; rank 0 writes files."""
    cfg, out = run.config, Path(run.config.output_dir)
    metrics_path = out / f"{cfg.name}.metrics.jsonl"
    history, logger = [], None
    if run.dist.is_main:  # a resumed run keeps the records of the epochs it does not redo
        if run.start_epoch and metrics_path.is_file():
            history = [r for r in read_metrics(metrics_path) if r["epoch"] <= run.start_epoch]
        logger = MetricsLogger(metrics_path)
        for record in history:
            logger.log(record)
    for epoch in range(run.start_epoch, cfg.epochs):
        start = time.perf_counter()
        train_loss, train_acc = train_epoch(run, epoch)
        val_loss, val_acc = evaluate(run, run.val_ds)
        run.train_time_s += time.perf_counter() - start
        record = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_acc, "val_loss": val_loss,
                  "val_accuracy": val_acc, "lr": run.optimizer.param_groups[0]["lr"],
                  "time_s": round(time.perf_counter() - start, 3)}  # fmt: skip
        history.append(record)
        if val_acc > run.best_val[0]:
            run.best_val, run.best_epoch = (val_acc, val_loss), epoch + 1
            run.best_state = {k: v.detach().cpu().clone() for k, v in run.module.state_dict().items()}
        stop = run.stopper.step(val_acc)
        if logger:
            logger.log(record)
            save_resume(run, epoch + 1)
            log.info("epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f", epoch + 1, cfg.epochs,
                     train_loss, train_acc, val_loss, val_acc)  # fmt: skip
        if stop:
            log.info("early stopping: no better val accuracy for %d epochs", cfg.early_stopping)
            break
    return history


def finish(run: Run, history: list[dict[str, Any]]) -> Path:
    """Restore the best weights and (rank 0) write the checkpoint and the learning-curve plot."""
    if run.best_state is not None:
        run.module.load_state_dict(run.best_state)
    cfg, out = run.config, Path(run.config.output_dir)
    if cfg.debug_rank_hashes:
        Path(cfg.debug_rank_hashes).mkdir(parents=True, exist_ok=True)
        Path(cfg.debug_rank_hashes, f"rank{run.dist.rank}.sha256").write_text(weights_hash(run.module))
    path = out / f"{cfg.name}.pt"
    if not run.dist.is_main:
        return path
    metrics = {"val_accuracy": run.best_val[0], "val_loss": run.best_val[1], "epochs": len(history),
               "best_epoch": run.best_epoch, "train_time_s": round(run.train_time_s, 2),
               "params": sum(p.numel() for p in run.module.parameters())}  # fmt: skip
    preprocessing = {"input_size": list(run.train_ds.image_size), "channels": run.train_ds.channels,
                     "mean": run.mean, "std": run.std}  # fmt: skip
    ckpt = make_checkpoint(task="classify", model_name=run.model_name, model_args=run.model_args, model=run.module,
                           train_config=asdict(cfg), metrics=metrics, preprocessing=preprocessing,
                           labels=run.train_ds.classes, data=data_info(run.spec, run.train_ds, run.val_ds))  # fmt: skip
    save_checkpoint(ckpt, path)
    plot_curves(history, out / f"{cfg.name}.curves.png", title=f"{cfg.name} on {cfg.dataset}")
    log.info(
        "%s: val accuracy %.4f (epoch %d), %.1fs", path, run.best_val[0], run.best_epoch, run.train_time_s
    )
    return path


def weights_hash(module: nn.Module) -> str:
    """sha256 over every parameter, in name order: equal across ranks iff DDP kept them in sync."""
    digest = hashlib.sha256()
    for name, param in sorted(module.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def run(config: TrainConfig) -> Path:
    """Train one resolved config end to end; the process group (if any) is always torn down."""
    d = setup_dist(config)
    try:
        r = prepare(config, d)
        return finish(r, fit(r))
    finally:
        if d.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = train(argv if argv is not None else sys.argv[1:])
    except (ValueError, KeyError, FileNotFoundError) as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"checkpoint: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
