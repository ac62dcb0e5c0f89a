"""A classifier run's resume state: what the run writes after every epoch (``save_resume``), how a
resumed run is checked against it before it reads or trains on anything (the same data flags, classes
and images, found again at their place or moved, and number of processes), whether it has anything
left to do (``complete``), and how it continues from it (``restore``). Reading the file, which one
a torchrun restart continues, and what a run stopped mid-epoch leaves to continue from, are
``training.resume``'s, shared with the translator; which flags a resumed run keeps, ``training.classify_resolve``'s.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from training.checkpoint import save_checkpoint
from training.classify_config import DATA_FLAGS, TrainConfig
from training.classify_run import Run
from training.data.image_formats import recorded_class_name
from training.data.images import DataSpec, ImageDataset, contents_differences
from training.mixed_precision import restore_scaler
from training.optim import restore_scheduler
from training.resume import (
    RUN_ID_KEY,
    all_trained,
    check_data_found,
    check_world_size,
    load_resume,
    moved,
    moved_line,
    run_complete,
)
from training.runtime import Dist, run_id

log = logging.getLogger("training.classify")  # the classifier's lines, whichever of its modules says them


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
        "train_config": asdict(run.config),  # --resume's defaults and checks (classify_resolve)
        RUN_ID_KEY: run_id(os.environ),  # a torchrun restart resumes its own job's only (restart_resume)
    }
    save_checkpoint(state, Path(run.config.output_dir) / f"{run.config.name}.resume.pt")


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


# What a resume state's "contents" proves of data found at another place (check_same_contents).
PROOF = "its classes and images per class"


def nothing_left(state: dict[str, Any], config: TrainConfig) -> tuple[str, str] | None:
    """Where the interrupted run has nothing left to train: what it trained, and how a run goes on."""
    bad, patience = state["stopper"]["bad_epochs"], config.early_stopping
    if 0 < patience <= bad and state["epoch"] < config.epochs:
        what = f"it had stopped early after epoch {state['epoch']} (no better val accuracy for {bad} epochs)"
        return what, "a larger --early-stopping, or 0, trains on"
    return all_trained(state, config.epochs)


def complete(config: TrainConfig, d: Dist) -> bool:
    """Whether the resumed run has nothing to do: nothing left to train, and its checkpoint written. A
    data flag or ``--seed`` given another value is refused first, as for a run that goes on (else a
    finished run took ``--seed 1`` in silence, where ``--lr`` was refused)."""
    state = load_resume(config.resume, mmap=True)
    check_data_flags(state, config)
    checkpoint = Path(config.output_dir) / f"{config.name}.pt"
    trained = ("epochs", state["epoch"])  # what finish records: the epochs it trained
    return run_complete(state, checkpoint, config.name, nothing_left(state, config), d, trained)


def check_data_flags(state: dict[str, Any], config: TrainConfig) -> None:
    """Refuse a data flag or ``--seed`` whose value differs from the interrupted run's, before its data
    or completeness is looked at; ``--data-path`` is ``check_resumable``'s, as data that moved is found
    at its new place once read."""
    saved = state["data"]
    now = {key: getattr(config, key) for key in DATA_FLAGS if key != "data_path" and key in saved}
    differ = data_differences({key: saved[key] for key in now}, now)
    if differ:
        raise ValueError(OTHER_DATA.format(", ".join(differ)))


# A resumed run given data flags of other values (check_data_flags, check_resumable).
OTHER_DATA = (
    "--resume: {}: a resumed run trains on the interrupted run's data; "
    "leave these flags unset to take its values"
)


def check_resumable(path: str, state: dict[str, Any], spec: DataSpec, d: Dist) -> None:
    """Refuse to resume on other data or another number of processes than the interrupted run's, or
    where its data is gone. Data at another ``--data-path`` is checked once read, where the resume state
    records what it read (``check_same_contents``): else refused here, as another value."""
    saved, now = state["data"], asdict(spec)
    recorded = saved.get("data_path")
    if recorded and spec.data_path and not moved(recorded, spec.data_path):
        now["data_path"] = recorded  # the same place, however written
        check_data_found(path, recorded, [spec.data_path], PROOF)  # and where it was looked for
    elif state.get("contents") and moved(recorded, spec.data_path):
        now["data_path"] = recorded
    differ = data_differences(saved, now)
    if differ:
        raise ValueError(OTHER_DATA.format(", ".join(differ)))
    check_world_size(state.get("world_size", d.world_size), d.world_size)


def check_same_contents(
    path: str, state: dict[str, Any], spec: DataSpec, train_ds: ImageDataset, *, main: bool = True
) -> None:
    """Refuse to resume on data whose classes or images changed since the interrupted run (a class
    folder added, removed or renamed, images added): the flags alone are the same, but the resumed model
    has the old run's head and its labels would mean other classes, and another split would put
    images it trained on into validation. Resume files written before they held it pass. Data found
    at another place that passes is recorded there from then on; the ``main`` rank says it moved."""
    saved, now = state.get("contents"), train_ds.contents()
    differ = contents_differences(saved, now) if saved else []
    if differ:  # a run under a non-UTF-8 locale recorded its class folders' names in that encoding
        before = {**saved, "classes": [recorded_class_name(name) for name in saved["classes"]]}
        differ = differ if contents_differences(before, now) else []
    recorded = state["data"].get("data_path")
    if differ and moved(recorded, spec.data_path):
        raise ValueError(
            f"--resume {path}: the data at {spec.data_path} (--data-path) is not the interrupted run's, "
            f"which it read at {recorded}: {'; '.join(differ)}. A resumed run goes on with its model "
            f"({len(saved['classes'])} classes) and its split of the same images: give --data-path the "
            "place of that data, or start a new run on this data (without --resume)"
        )
    if differ:
        raise ValueError(
            f"--resume {path}: the data at {spec.data_path or spec.dataset} changed since the interrupted "
            f"run: {'; '.join(differ)}. A resumed run goes on with its model ({len(saved['classes'])} "
            "classes) and its split of the same images: put the data back as it was, or start a new run "
            "on the new data (without --resume)"
        )
    if moved(recorded, spec.data_path) and main:
        log.info("%s", moved_line(recorded, spec.data_path, PROOF))


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
    if run.start_epoch >= run.config.epochs and not run.stopped_early and run.dist.is_main:
        log.info("nothing left to train (all %d epochs trained): writing its checkpoint", run.config.epochs)
    elif run.stopped_early and run.dist.is_main:
        log.info(
            "the interrupted run had stopped early (no better val accuracy for %d epochs): nothing left "
            "to train; a larger --early-stopping, or 0, trains on",
            run.stopper.bad_epochs,
        )
