"""The classifier training run behind ``python -m training.classify``: process group, data, model,
epochs, evaluation, resume files and the final checkpoint (contract 1). The CLI, the recipes and the
config live in ``training.classify``."""

import dataclasses
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from training.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from training.classify import TrainConfig, augment_config, recipe_model_args, resolve
from training.data.augment import Augmenter
from training.data.images import (
    DataSpec,
    ImageDataset,
    channel_stats,
    contents_differences,
    data_info,
    make_splits,
    normalize,
)
from training.data.loader import eval_batches, stream_seed, train_batches
from training.models import build_model, make_config
from training.optim import build_optimizer, build_scheduler, last_step_lr, restore_scheduler
from training.resume import RUN_ID_KEY, load_resume, restart_resume, resume_path
from training.runtime import (
    Amp,
    Dist,
    TrainingDiverged,
    all_sum,
    collective_timeouts,
    divergence,
    divergence_advice,
    make_amp,
    mean_over_ranks,
    optimizer_step,
    restore_scaler,
    run_id,
    setup_dist,
    show_progress,
    teardown,
    weights_divergence,
    weights_hash,
    wrap_ddp,
)
from training.tracking import EarlyStopping, MetricsLogger, plot_curves, read_metrics, run_files

log = logging.getLogger("training.classify")
DROPOUT_SEED_OFFSET = 0x5EED_D20F  # keeps the dropout stream apart from the augmenter's
AUX_LOSS_WEIGHT = 0.3  # of each auxiliary classifier's loss, as in the GoogLeNet paper


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
    amp: Amp  # --amp: the forward's autocast and fp16's gradient scaler
    augmenter: Augmenter
    stopper: EarlyStopping
    start_epoch: int = 0
    stopped_early: bool = False  # the resumed run had stopped early: nothing is left to train
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    best_val: tuple[float, float] = (-1.0, float("inf"))  # (accuracy, loss)
    train_time_s: float = 0.0

    @property
    def scaler(self) -> torch.amp.GradScaler:
        return self.amp.scaler

    @scaler.setter
    def scaler(self, scaler: torch.amp.GradScaler) -> None:
        self.amp.scaler = scaler


def build_classifier(config: TrainConfig, num_classes: int, channels: int) -> tuple[str, dict, nn.Module]:
    """Registry model from the recipe + ``--model-arg``, or from a ``--finetune`` checkpoint with a new head."""
    if config.finetune:
        return finetune_classifier(config, num_classes, channels)
    args = recipe_model_args(config.model)
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
    held = checkpoint_channels(config.finetune, ckpt)
    state = adapt_input_channels(module, ckpt["state_dict"], held, channels)
    try:
        skipped = load_matching_weights(module, state)
    except ValueError as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(config.model_args.items()))
        given = f" (--model-arg {shown} changes its shapes?)" if shown else ""
        raise ValueError(f"--finetune {config.finetune}: {exc}{given}") from None
    log.info("finetune from %s: new (re-initialised) tensors: %s", config.finetune, skipped or "none")
    return name, args, module


def checkpoint_channels(path: str, ckpt: dict[str, Any]) -> int:
    """The channels a ``--finetune`` checkpoint's model takes: its preprocessing's, else its model's
    ``in_channels`` (a checkpoint written without preprocessing)."""
    channels = (ckpt.get("preprocessing") or {}).get("channels") or ckpt["model"]["args"].get("in_channels")
    if channels not in (1, 3):
        raise ValueError(
            f"--finetune {path}: the checkpoint records no channel count (preprocessing 'channels' or the "
            "model's 'in_channels'); pass --channels"
        )
    return int(channels)


def adapt_input_channels(
    module: nn.Module, state: dict[str, torch.Tensor], old: int, new: int
) -> dict[str, torch.Tensor]:
    """``state`` with each input-layer weight of ``old`` input channels brought to the ``new`` the
    model takes (those whose shapes differ only there), as timm's ``adapt_input_conv``: 1 -> 3 spreads
    the weights over three equal thirds, 3 -> 1 sums them, so a grey image replicated to RGB (or an RGB
    image whose channels are equal) gives the pretrained layer's response, instead of a new random layer."""
    if old == new:
        return state
    own = module.state_dict()
    adapted = {}
    for key, value in state.items():
        target = own.get(key)
        if target is None or value.ndim < 3:  # a convolution's (out, in, *kernel) weight
            continue
        if tuple(value.shape) == (target.shape[0], old, *target.shape[2:]) and target.shape[1] == new:
            adapted[key] = value.expand(-1, new, *value.shape[2:]) / new if old == 1 else value.sum(1, True)
    if adapted:
        log.info("finetune: input layer(s) %s adapted from %d to %d channels", sorted(adapted), old, new)
    return {**state, **adapted}


def load_matching_weights(module: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy every tensor whose name and shape match; return the names left at their fresh init. At least
    one convolution or linear weight must match: BatchNorm's step counters are scalars in any
    architecture, and a head's bias matches whenever the class count does, whatever the layers."""
    own = module.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not any(v.is_floating_point() and v.ndim >= 2 for v in matched.values()):
        raise ValueError(
            "none of the checkpoint's weights fits this model's shapes (another architecture?): it would "
            "train from scratch"
        )
    module.load_state_dict(matched, strict=False)
    return sorted(set(own) - set(matched))


def _model(config: TrainConfig, train_ds: Any, resume: dict | None) -> tuple[str, dict, nn.Module]:
    """The model's registry name, its arguments and the module: the resumed run's, with its weights,
    or a fresh (or finetuned) classifier for ``train_ds``, seeded alike on every rank."""
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    if resume:
        name, args = resume["model_name"], resume["model_args"]
        module = build_model(name, **args)
        module.load_state_dict(resume["model"])
        return name, args, module
    return build_classifier(config, len(train_ds.classes), train_ds.channels)


def _optimizer(config: TrainConfig, d: Dist, module: nn.Module, train_ds: Any) -> tuple[Any, Any]:
    """The optimizer and its learning-rate schedule, whose warm-up and length count this rank's steps."""
    shard = train_batches(
        train_ds, config.batch_size, epoch=0, seed=config.seed, rank=d.rank, world_size=d.world_size
    )
    steps = len(shard)
    optimizer = build_optimizer(module, config.optimizer, config.lr, config.weight_decay)
    scheduler = build_scheduler(
        optimizer,
        schedule=config.schedule,
        warmup_steps=round(config.warmup_epochs * steps),
        total_steps=steps * config.epochs,
    )
    return optimizer, scheduler


def prepare(config: TrainConfig, d: Dist) -> Run:
    """Data, model, optimizer, schedule and augmentation for a fresh, finetuned or resumed run."""
    amp = make_amp(config.amp, d.device)  # an autocast the device cannot run: refused before the data
    resume = load_resume(config.resume) if config.resume else None
    if resume:
        config = resumed_config(config, resume)
    elif config.finetune and config.channels is None:
        channels = checkpoint_channels(config.finetune, load_checkpoint(config.finetune))
        config = dataclasses.replace(config, channels=channels)
    spec = DataSpec(
        config.dataset,
        config.data_path,
        config.image_size,
        config.channels,
        config.seed,
        config.val_fraction,
        config.limit_train,
        config.limit_val,
    )
    if resume:  # before the data is read
        check_resumable(resume, spec, d)
    train_ds, val_ds = make_splits(spec)
    if resume:  # before a model of the old classes trains on the new labels
        check_same_contents(config.resume, resume, spec, train_ds)
    mean, std = channel_stats(train_ds.images)
    name, args, module = _model(config, train_ds, resume)
    module.to(d.device)
    model = wrap_ddp(module, d)
    optimizer, scheduler = _optimizer(config, d, module, train_ds)
    run = Run(
        config,
        d,
        spec,
        train_ds,
        val_ds,
        mean,
        std,
        name,
        args,
        module,
        model,
        optimizer,
        scheduler,
        amp,
        Augmenter(augment_config(config), config.seed),
        EarlyStopping(config.early_stopping),
    )
    if resume:
        restore(run, resume)
    return run


def resumed_config(config: TrainConfig, resume: dict[str, Any]) -> TrainConfig:
    """A resumed run's config with what it continues left unset taken from the interrupted run: the
    channels it trained on (a finetuned run's came from its checkpoint, so resuming it without
    ``--channels`` was refused as other data), and the ``--model-arg`` and ``--finetune`` that made its
    model (else its checkpoint's ``train_config`` named an architecture other than the one it holds)."""
    saved = resume.get("train_config") or {}
    held = {
        "channels": resume["data"].get("channels"),
        "model_args": saved.get("model_args") or {},
        "finetune": saved.get("finetune"),
    }
    return dataclasses.replace(config, **{k: v for k, v in held.items() if not getattr(config, k)})


def train_epoch(run: Run, epoch: int) -> tuple[float, float]:
    """One pass over this rank's shard; returns the all-reduced (mean loss, accuracy) over the split's
    examples, each counted once (the sampler's padding copies left out: see ``sampler_padding``), and
    over the batches whose loss was finite (a batch that overflowed fp16 was skipped, not trained on).
    Stops the run (``TrainingDiverged``) at the step its loss goes NaN or inf on any rank."""
    cfg, d = run.config, run.dist
    run.model.train()
    run.augmenter.train()
    seed = cfg.seed * 1_000_003 + epoch * d.world_size + d.rank
    run.augmenter.generator.manual_seed(stream_seed(seed))
    # Dropout draws from the global generator: seeded per epoch too (apart from the augmenter's), so a
    # resumed run draws the masks the uninterrupted run would have drawn from this epoch on.
    torch.manual_seed(stream_seed(seed + DROPOUT_SEED_OFFSET))
    batches = train_batches(
        run.train_ds, cfg.batch_size, epoch=epoch, seed=cfg.seed, rank=d.rank, world_size=d.world_size
    )
    total_loss, correct, seen, offset = 0.0, 0, 0, 0
    bar = tqdm(
        batches,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        leave=False,
        disable=not show_progress(cfg.progress, d),
    )
    for step, idx in enumerate(bar, 1):
        images = run.train_ds.images[idx].to(d.device).float() / 255.0  # (B, C, H, W) in [0, 1]
        labels = run.train_ds.labels[idx].to(d.device)  # (B,)
        x = normalize(run.augmenter(images), run.mean, run.std)  # (B, C, H, W)
        with run.amp.autocast():
            logits, losses = example_losses(run.model(x), labels, cfg.label_smoothing)  # (B, classes), (B,)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(losses.mean()).backward()
        stepped = optimizer_step(
            run.scaler, run.optimizer, run.scheduler, run.model.parameters(), cfg.clip_grad_norm
        )
        loss = float(losses.detach().mean())
        reason = divergence(mean_over_ranks([loss], d)[0], stepped, run.scaler)
        if reason:
            raise diverged(run, f"at epoch {epoch + 1}/{cfg.epochs}, step {step}/{len(batches)}", reason)
        real = ~sampler_padding(len(run.train_ds), d.rank, d.world_size, offset, len(idx))  # (B,)
        offset += len(idx)
        if not math.isfinite(loss):  # a step the fp16 scaler skipped: the weights did not train on it
            continue
        on_device = real.to(d.device)
        total_loss += float(losses.detach()[on_device].sum())
        correct += int((logits.argmax(1) == labels)[on_device].sum())
        seen += int(real.sum())
        if seen:  # a rank's first batches may be all padding (a split smaller than the processes)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
    total_loss, correct, seen = all_sum([total_loss, correct, seen], d)
    return (total_loss / seen, correct / seen) if seen else (math.nan, math.nan)


def diverged(run: Run, where: str, reason: str) -> TrainingDiverged:
    """The error that stops a diverged run: where, why, and what to try."""
    cfg = run.config
    advice = divergence_advice(
        cfg.lr, "--clip-grad-norm", bool(cfg.clip_grad_norm), "--amp bf16" if cfg.amp == "fp16" else None
    )
    return TrainingDiverged(
        f"training diverged {where}: {reason}; stopped without writing a checkpoint from these weights; "
        f"{advice}"
    )


def sampler_padding(n: int, rank: int, world_size: int, start: int, count: int) -> torch.Tensor:
    """Bool[count]: which of positions ``start ..`` of this rank's epoch order are ``DistributedSampler``
    padding, the copies it appends so every rank gets as many examples. They are trained on like the
    rest, but the epoch's train metrics leave them out, so they average each example of the split once,
    as a single process's do (the sampler strides its padded order: rank r's position p is p*W + r)."""
    return rank + (start + torch.arange(count)) * world_size >= n


def example_losses(
    output: torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]], labels: torch.Tensor, smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits and each example's loss of a training forward (their mean is the training loss). A
    model with auxiliary classifiers (GoogLeNet's ``aux_logits``) returns ``(logits, [aux, ...])`` in
    training: each aux loss counts ``AUX_LOSS_WEIGHT``."""
    logits, aux = output if isinstance(output, tuple) else (output, [])
    losses = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing, reduction="none")  # (B,)
    for extra in aux:
        losses = losses + AUX_LOSS_WEIGHT * F.cross_entropy(
            extra.float(), labels, label_smoothing=smoothing, reduction="none"
        )
    return logits, losses


def training_loss(
    output: torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]], labels: torch.Tensor, smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits and the (mean) loss of a training forward: see ``example_losses``."""
    logits, losses = example_losses(output, labels, smoothing)
    return logits, losses.mean()


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


def save_resume(run: Run, epoch: int) -> None:
    """After each epoch: weights, optimizer, scheduler, best-so-far and epoch, as plain tensors/dicts."""
    state = {
        "epoch": epoch,
        "model_name": run.model_name,
        "model_args": run.model_args,
        "model": run.module.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "best_state": run.best_state,
        "best_epoch": run.best_epoch,
        "best_val": list(run.best_val),
        "stopper": {"best": run.stopper.best, "bad_epochs": run.stopper.bad_epochs},
        "train_time_s": run.train_time_s,
        "world_size": run.dist.world_size,  # the schedule counts this many processes' steps per epoch
        "data": asdict(run.spec),
        "contents": run.train_ds.contents(),  # the classes and images the run read (check_same_contents)
        "train_config": asdict(run.config),  # --resume's defaults and checks (classify.resume_defaults)
        RUN_ID_KEY: run_id(os.environ),  # a torchrun restart resumes its own job's only (restart_resume)
    }
    save_checkpoint(state, Path(run.config.output_dir) / f"{run.config.name}.resume.pt")


def check_resumable(state: dict[str, Any], spec: DataSpec, d: Dist) -> None:
    """Refuse to resume on other data or another number of processes than the interrupted run's."""
    differ = data_differences(state["data"], asdict(spec))
    if differ:
        raise ValueError(
            f"--resume: {', '.join(differ)}: a resumed run trains on the interrupted run's data; leave "
            "these flags unset to take its values"
        )
    check_world_size(state.get("world_size", d.world_size), d.world_size)


def check_same_contents(path: str, state: dict[str, Any], spec: DataSpec, train_ds: ImageDataset) -> None:
    """Refuse to resume on data whose classes or images changed since the interrupted run (a class
    folder added, removed or renamed, images added): the flags alone are the same, but the resumed model
    has the old run's head and its labels would mean other classes, and another split would put
    images it trained on into validation. Resume files written before they held it pass."""
    saved = state.get("contents")
    differ = contents_differences(saved, train_ds.contents()) if saved else []
    if differ:
        raise ValueError(
            f"--resume {path}: the data at {spec.data_path or spec.dataset} changed since the interrupted "
            f"run: {'; '.join(differ)}. A resumed run goes on with its model ({len(saved['classes'])} "
            "classes) and its split of the same images: put the data back as it was, or start a new run "
            "on the new data (without --resume)"
        )


def data_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Each data flag (a ``DataSpec`` field) whose value differs from the interrupted run's, as
    ``--flag value (the interrupted run's: value)``."""
    return [
        f"--{key.replace('_', '-')} {'unset' if now.get(key) is None else now.get(key)} "
        f"(the interrupted run's: {'unset' if saved.get(key) is None else saved.get(key)})"
        for key in sorted(set(saved) | set(now))
        if saved.get(key) != now.get(key)
    ]


def restore(run: Run, state: dict[str, Any]) -> None:
    """Continue the interrupted run's optimizer, schedule, best weights and early stopping."""
    run.optimizer.load_state_dict(state["optimizer"])
    restore_scheduler(run.scheduler, state["scheduler"])
    restore_scaler(run.scaler, state["scaler"])
    run.start_epoch, run.best_epoch, run.best_state = state["epoch"], state["best_epoch"], state["best_state"]
    run.best_val, run.train_time_s = tuple(state["best_val"]), state["train_time_s"]
    run.stopper.best, run.stopper.bad_epochs = state["stopper"]["best"], state["stopper"]["bad_epochs"]
    # A run stopped early wrote its last resume state before its checkpoint: killed in between, it is
    # resumed, and must not train on (unless a longer --early-stopping, or 0, is given now).
    run.stopped_early = 0 < run.stopper.patience <= run.stopper.bad_epochs
    if run.dist.is_main:
        log.info("resuming %s after epoch %d of %d", run.config.name, run.start_epoch, run.config.epochs)
    if run.stopped_early and run.dist.is_main:
        log.info(
            "the interrupted run had stopped early (no better val accuracy for %d epochs): nothing left "
            "to train; a larger --early-stopping, or 0, trains on",
            run.stopper.bad_epochs,
        )


def check_world_size(saved: int, now: int) -> None:
    """Refuse to resume on another number of processes: each rank steps once per batch of its shard,
    so the restored schedule would count its steps against an epoch of another length (its cosine
    would end epochs early, leaving the rest at learning rate 0, or never reach its end), and the
    global batch and the data order would differ too. Files written before they held it pass."""
    if saved != now:
        raise ValueError(
            f"--resume: the interrupted run trained on {saved} process(es), this one runs on {now}: "
            f"resume it with the same number (torchrun --nproc_per_node {saved}"
            f"{'' if saved > 1 else ', or without torchrun'})"
        )


def resumed_metrics(resume: str) -> Path:
    """The interrupted run's ``<name>.metrics.jsonl``, beside its resume state: the records of its
    epochs, whatever ``--name`` and ``--output-dir`` the resumed run writes under."""
    state = resume_path(resume)
    return state.with_name(state.name.removesuffix(".resume.pt") + ".metrics.jsonl")


def replaced_files(cfg: TrainConfig) -> list[Path]:
    """The files of another run under this run's name and output directory, which it replaces as it
    writes its own (``MetricsLogger``): none where it resumes the run whose files they are."""
    out = Path(cfg.output_dir)
    if cfg.resume and resume_path(cfg.resume).resolve() == (out / f"{cfg.name}.resume.pt").resolve():
        return []
    return run_files(out, cfg.name)


def fit(run: Run) -> list[dict[str, Any]]:
    """The epoch loop: train, evaluate, log, keep the best weights, stop early; rank 0 writes files."""
    cfg, out = run.config, Path(run.config.output_dir)
    metrics_path = out / f"{cfg.name}.metrics.jsonl"
    history, logger = [], None
    if run.dist.is_main:  # a resumed run keeps the records of the epochs it does not redo
        earlier = resumed_metrics(cfg.resume) if cfg.resume else metrics_path
        if run.start_epoch and earlier.is_file():
            history = [r for r in read_metrics(earlier) if r["epoch"] <= run.start_epoch]
        kept = history if cfg.resume else None
        logger = MetricsLogger(metrics_path, replacing=replaced_files(cfg), records=kept)
    for epoch in range(run.start_epoch, run.start_epoch if run.stopped_early else cfg.epochs):
        start = time.perf_counter()
        train_loss, train_acc = train_epoch(run, epoch)
        val_loss, val_acc = evaluate(run, run.val_ds)
        check_finite_epoch(run, epoch, val_loss)
        run.train_time_s += time.perf_counter() - start
        record = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": last_step_lr(run.scheduler),
            "time_s": round(time.perf_counter() - start, 3),
        }
        history.append(record)
        if val_acc > run.best_val[0]:
            run.best_val, run.best_epoch = (val_acc, val_loss), epoch + 1
            run.best_state = {k: v.detach().cpu().clone() for k, v in run.module.state_dict().items()}
        stop = run.stopper.step(val_acc)
        if logger:
            logger.log(record)
            save_resume(run, epoch + 1)
            log.info(
                "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f",
                epoch + 1,
                cfg.epochs,
                train_loss,
                train_acc,
                val_loss,
                val_acc,
            )
        if stop:
            log.info("early stopping: no better val accuracy for %d epochs", cfg.early_stopping)
            break
    return history


def resume_left(config: TrainConfig) -> str:
    """What a run that stopped mid-epoch leaves to continue from: the resume state under its name
    (written whole after its last finished epoch, or an earlier run's, which it has not replaced), else
    the one it resumed from."""
    places = [Path(config.output_dir) / f"{config.name}.resume.pt"]
    places += [resume_path(config.resume)] if config.resume else []
    for path in places:
        try:
            epoch = load_resume(str(path), mmap=True)["epoch"]
        except (OSError, ValueError):  # none there, or not a resume state
            continue
        return f"{path} holds the run after epoch {epoch}, whole: --resume {path} continues from there"
    return f"no epoch had finished, so there is no resume state at {places[0]}"


def check_finite_epoch(run: Run, epoch: int, val_loss: float) -> None:
    """Stop the run before weights or a validation loss that went NaN or inf are logged, kept as the best
    or saved for ``--resume`` (every rank alike: the loss is all-reduced, the weights and buffers are
    rank 0's)."""
    reason = weights_divergence(run.module)
    if reason is None and not math.isfinite(val_loss):
        reason = f"the validation loss is {val_loss}"
    if reason:
        raise diverged(run, f"in epoch {epoch + 1}/{run.config.epochs}", reason)


def keep_best(run: Run) -> None:
    """Every rank: restore the best epoch's weights (and write their hash with --debug-rank-hashes)."""
    if run.best_state is not None:
        run.module.load_state_dict(run.best_state)
    cfg = run.config
    if cfg.debug_rank_hashes:
        Path(cfg.debug_rank_hashes).mkdir(parents=True, exist_ok=True)
        Path(cfg.debug_rank_hashes, f"rank{run.dist.rank}.sha256").write_text(weights_hash(run.module))


def finish(run: Run, history: list[dict[str, Any]]) -> Path:
    """Rank 0: write the checkpoint and the learning-curve plot; returns the checkpoint's path."""
    cfg, out = run.config, Path(run.config.output_dir)
    path = out / f"{cfg.name}.pt"
    metrics = {
        "val_accuracy": run.best_val[0],
        "val_loss": run.best_val[1],
        "epochs": len(history),
        "best_epoch": run.best_epoch,
        "train_time_s": round(run.train_time_s, 2),
        "params": sum(p.numel() for p in run.module.parameters()),
    }
    preprocessing = {
        "input_size": list(run.train_ds.image_size),
        "channels": run.train_ds.channels,
        "mean": run.mean,
        "std": run.std,
    }
    ckpt = make_checkpoint(
        task="classify",
        model_name=run.model_name,
        model_args=run.model_args,
        model=run.module,
        train_config=asdict(cfg),
        metrics=metrics,
        preprocessing=preprocessing,
        labels=run.train_ds.classes,
        data=data_info(run.spec, run.train_ds, run.val_ds),
    )
    save_checkpoint(ckpt, path)
    plot_curves(history, out / f"{cfg.name}.curves.png", title=f"{cfg.name} on {cfg.dataset}")
    log.info(
        "%s: val accuracy %.4f (epoch %d), %.1fs", path, run.best_val[0], run.best_epoch, run.train_time_s
    )
    return path


def restarted(config: TrainConfig, d: Dist) -> TrainConfig:
    """An attempt torchrun restarted (``--max-restarts``) resumes from the resume state under its name,
    resolved as ``--resume`` would be, where its own torchrun job's interrupted attempt wrote it and every
    rank reads it so (``restart_resume``); else, and in a first attempt, the config as given."""
    found = restart_resume(Path(config.output_dir) / f"{config.name}.resume.pt", d)
    return resolve(dataclasses.replace(config, resume=str(found))) if found else config


def run(config: TrainConfig) -> Path:
    """Train one resolved config end to end: every rank trains and leaves the process group (if any)
    with the others, then rank 0 alone writes the checkpoint and plot (no rank waits on it). An
    attempt torchrun restarted continues its job's last finished epoch (``restarted``). A collective
    that outlasts ``--dist-timeout`` ends it with ``CollectiveTimeout``."""
    with collective_timeouts(config.dist_timeout, config.device, lambda: resume_left(config)):
        d = setup_dist(config.device, config.dist_timeout, on_restart=None)  # restarted() says it
        config = restarted(config, d)
        r = prepare(config, d)
        with logging_redirect_tqdm():  # a log line above the epoch's bar, not run on from it
            history = fit(r)
        keep_best(r)
        teardown(d)  # before rank 0's writing, and not after an error: see teardown
    if d.is_main:
        return finish(r, history)
    return Path(config.output_dir) / f"{config.name}.pt"
