"""The classifier training run behind ``python -m training.classify``, end to end (``run``): process
group, data and model (``prepare``: a fresh, finetuned or resumed run), the epoch loop (``fit``: train,
evaluate, log, keep the best weights, stop early, write the resume state) and the final checkpoint
(contract 1). The command and its flags live in ``training.classify``, the config in
``training.classify_config``; an epoch's passes in ``training.classify_epoch``, the resume state in
``training.classify_resume``."""

import dataclasses
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.contrib.logging import logging_redirect_tqdm

from training.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from training.classify_config import TrainConfig, augment_config, recipe_model_args
from training.classify_epoch import diverged, evaluate, train_epoch
from training.classify_finetune import checkpoint_channels, finetune_classifier
from training.classify_resolve import resolve
from training.classify_resume import (
    check_resumable,
    check_same_contents,
    complete,
    restore,
    resumed_config,
    save_resume,
)
from training.classify_run import Run
from training.data.augment import Augmenter
from training.data.images import DataSpec, channel_stats, data_info, make_splits
from training.data.loader import train_batches
from training.dist_timeout import collective_timeouts
from training.divergence import weights_divergence
from training.mixed_precision import make_amp
from training.models import build_model, make_config
from training.optim import build_optimizer, build_scheduler, last_step_lr
from training.resume import (
    load_resume,
    replaced_files,
    restart_resume,
    resume_left,
    resumed_metrics,
    start_run,
)
from training.run_lock import run_lock
from training.runtime import (
    Dist,
    rank_errors,
    read_on_every_rank,
    reports_errors,
    show_progress,
    teardown,
    weights_hash,
    wrap_ddp,
)
from training.tracking import EarlyStopping, MetricsLogger, plot_curves, read_metrics

log = logging.getLogger("training.classify")


def build_classifier(
    config: TrainConfig, num_classes: int, channels: int, classes: list[str] | None = None
) -> tuple[str, dict, nn.Module]:
    """Registry model from the recipe + ``--model-arg``, or from a ``--finetune`` checkpoint, its head's
    rows matched to the data's ``classes`` by name."""
    if config.finetune:
        return finetune_classifier(config, num_classes, channels, classes)
    args = recipe_model_args(config.model)
    args.update(num_classes=num_classes, in_channels=channels, **config.model_args)
    args = asdict(make_config(config.model, **args))
    return config.model, args, build_model(config.model, **args)


def _model(config: TrainConfig, train_ds: Any, resume: dict | None) -> tuple[str, dict, nn.Module]:
    """The model's registry name, its arguments and the module: the resumed run's, with its weights,
    or a fresh (or finetuned) classifier for ``train_ds``, seeded alike on every rank."""
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    if resume:
        name, args = resume["model_name"], resume["model_args"]
        module = build_model(name, **args)
        module.load_state_dict(resume["model"])
        return name, args, module
    return build_classifier(config, len(train_ds.classes), train_ds.channels, list(train_ds.classes))


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
        check_resumable(config.resume, resume, spec, d)
    train_ds, val_ds = read_on_every_rank(
        lambda: make_splits(spec, progress=show_progress(config.progress, d)), d
    )
    if resume:  # before a model of the old classes trains on the new labels
        check_same_contents(config.resume, resume, spec, train_ds, main=d.is_main)
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
        logger = MetricsLogger(
            metrics_path, replacing=replaced_files(cfg.output_dir, cfg.name, cfg.resume), records=kept
        )
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
        Path(cfg.debug_rank_hashes, f"rank{run.dist.rank}.sha256").write_text(
            weights_hash(run.module), encoding="utf-8"
        )


def finish(run: Run, history: list[dict[str, Any]]) -> Path:
    """Rank 0: write the checkpoint and the learning-curve plot; returns the checkpoint's path."""
    cfg, out = run.config, Path(run.config.output_dir)
    path = out / f"{cfg.name}.pt"
    metrics = {
        "val_accuracy": run.best_val[0],
        "val_loss": run.best_val[1],
        "epochs": history[-1]["epoch"] if history else run.start_epoch,  # not len: records may be gone
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
    if not found:
        return config
    # flips inherited under --no-augment are taken from the state again, not passed as a given --hflip:
    # check_augment_flags refused that, and the restart of the run it had accepted failed
    hflip = config.hflip if config.augment else None
    return resolve(dataclasses.replace(config, resume=str(found), hflip=hflip))


def run(config: TrainConfig) -> Path:
    """Train one resolved config end to end: every rank trains and leaves the process group (if any)
    with the others, then rank 0 alone writes the checkpoint and plot (no rank waits on it). An
    attempt torchrun restarted continues its job's last finished epoch (``restarted``). A collective
    that outlasts ``--dist-timeout`` ends it with ``CollectiveTimeout``. A resumed run with nothing to
    train whose checkpoint holds its result already writes nothing (``classify_resume.complete``)."""
    left = lambda: resume_left(config.output_dir, config.name, config.resume)  # noqa: E731
    with run_lock(config.output_dir, config.name, writer=reports_errors(os.environ)):
        with collective_timeouts(config.dist_timeout, config.device, left):
            d, config, path, done = start_run(config, restarted, complete)
            if done:
                return path
            r = prepare(config, d)
            # a log line above the epoch's bar, not run on from it; a refusal of one rank's printed by it
            with logging_redirect_tqdm(), rank_errors(d):
                history = fit(r)
            keep_best(r)
            teardown(d)  # before rank 0's writing, and not after an error: see teardown
        return finish(r, history) if d.is_main else path
