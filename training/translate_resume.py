"""A translator run's resume state: what ``--resume`` (or a torchrun restart, by itself) takes from it
and what it refuses to change, the corpus it must find again (at its place, or moved: the same pairs),
whether it has anything left to do (``complete``), and the state written after every epoch and
restored from it, so that a resumed run ends bit for bit where the uninterrupted one does.

Reading the file and its refusals (a damaged file, another task's), the restart decision, the
world-size check and the records and files a resumed run keeps are the classifier's too
(``training.resume``); the translator's loop (``training.translate_loop``) calls what is here.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import save_checkpoint
from training.data.corpus import Corpus, corpus_files
from training.flags import flag
from training.mixed_precision import amp_choice, restore_scaler
from training.optim import restore_scheduler
from training.resume import (
    RUN_ID_KEY,
    all_trained,
    changed_model_args,
    check_data_found,
    load_resume,
    moved,
    moved_line,
    replaced_files,
    restart_resume,
    resumed_metrics,
    resumed_output_dir,
    run_complete,
)
from training.runtime import Dist, run_id
from training.tracking import MetricsLogger, read_metrics, run_files
from training.translate_config import TranslateConfig, corpus_config
from training.translate_flags import absolute_data_path

log = logging.getLogger("training.translate")

# Settings a resumed run keeps, given again or not at all: its corpus, split and tokenizers were made
# with the data ones (--seed also draws the batch order), its model with --model, --model-arg and
# --dropout, and its optimizer and schedule count steps of batches of that size at that rate, on
# that loss (--label-smoothing) and gradients clipped so (--clip-norm). Not --data-path: a corpus
# moved elsewhere is read there and checked to hold the same pairs (check_same_corpus).
RESUME_FIXED = (
    "model",
    "preset",
    "corpus",
    "lang",
    "n_pairs",
    "lowercase",
    "valid_size",
    "test_size",
    "max_length",
    "vocab_size",
    "shared_vocab",
    "seed",
    "dropout",
    "batch_tokens",
    "batch_size",
    "lr",
    "warmup_steps",
    "schedule",
    "weight_decay",
    "label_smoothing",
    "clip_norm",
)
# How a fixed setting is given on the command line, where its flag is not its name's.
FLAGS = {"shared_vocab": "--separate-vocab"}
# Why a resumed run stopped where it did, as the resume state records it (None: it trains on).
EARLY_STOPPING, PERFECT, TIME_BUDGET = "early_stopping", "exact_match", "time_budget"
# What a resume state's "corpus" proves of a corpus found at another place (check_same_corpus).
PROOF = "the sha256 of each split's pairs"


def resumed_config(resume: str, given: dict[str, Any]) -> TranslateConfig:
    """The settings of a run resuming from ``resume``: the interrupted run's, with ``given`` (the
    command line's) over those that may change; a fixed one (``RESUME_FIXED``, ``--model-arg``) given
    with another value is an error naming each, before any data is read."""
    state = load_resume(resume, mmap=True, task="translate")
    saved = state["train_config"]
    if given.get("data_path"):
        given = {**given, "data_path": absolute_data_path(given["data_path"])}
    differ = [
        f"{shown(key, given[key])} (the interrupted run's: {held_value(key, saved.get(key))})"
        for key in RESUME_FIXED
        if key in given and given[key] != saved.get(key)
    ]
    held = state["model_args"]
    differ += [
        f"--model-arg {key}={value!r} (the interrupted run's: {was!r})"
        for key, value, was in changed_model_args(given.get("model_args", {}), held)
    ]
    if differ:
        raise ValueError(
            f"--resume {resume}: {', '.join(differ)}: a resumed run goes on with the interrupted run's "
            "corpus, tokenizers, model, batches, loss and optimizer; leave these flags unset to take its "
            "values, or start a new run (without --resume)"
        )
    cfg = {**saved, **given, "model_args": saved.get("model_args") or {}, "resume": resume}
    cfg["output_dir"] = given.get("output_dir") or resumed_output_dir(
        resume, cfg["name"], saved.get("output_dir")
    )
    cfg["amp"] = amp_choice(cfg.get("amp"))  # --no-amp's False: float32, recorded as None
    config = TranslateConfig.from_dict(cfg)  # a setting the interrupted run's version lacked: BASE's
    if not given.get("data_path") and config.data_path:  # gone: say how a moved corpus is given
        check_data_found(resume, config.data_path, corpus_files(corpus_config(config)), PROOF)
    return config


def shown(key: str, value: Any) -> str:
    """A setting as its flag gives it: ``--lr 0.01``, ``--separate-vocab``, ``--lowercase``."""
    name = FLAGS.get(key, flag(key))
    return name if isinstance(value, bool) else f"{name} {value}"


def held_value(key: str, value: Any) -> str:
    """An interrupted run's setting as its config holds it: ``0.003``, ``'tsv'``, ``shared_vocab=True``."""
    return f"{key}={value}" if isinstance(value, bool) else repr(value)


def restarted(cfg: TranslateConfig, d: Dist) -> TranslateConfig:
    """An attempt torchrun restarted (``--max-restarts``) resumes from the resume state under its name,
    resolved as ``--resume`` would be with the attempt's own settings given, where its own torchrun
    job's interrupted attempt wrote it and every rank reads it so (``restart_resume``); else, and in a
    first attempt, ``cfg`` as it is."""
    found = restart_resume(Path(cfg.output_dir) / f"{cfg.name}.resume.pt", d)
    if not found:
        return cfg
    return resumed_config(str(found), {key: value for key, value in asdict(cfg).items() if value is not None})


def corpus_digest(corpus: Corpus) -> dict[str, dict[str, Any]]:
    """Each split's pairs (those that fit the model, in order) as a count and a sha256: what a resumed
    run must find again."""
    digest = {}
    for split in ("train", "valid", "test"):
        pairs = getattr(corpus, split)
        sha = hashlib.sha256()
        for source, target in pairs:
            sha.update(f"{source}\t{target}\n".encode(errors="surrogatepass"))
        digest[split] = {"pairs": len(pairs), "sha256": sha.hexdigest()}
    return digest


def check_same_corpus(
    cfg: TranslateConfig, state: dict[str, Any], digest: dict[str, Any], *, main: bool = True
) -> None:
    """Refuse to resume on a corpus whose pairs changed since the interrupted run (the same flags, a
    file edited or replaced, or another file at a new ``--data-path``): the resumed model's tokenizers
    and split are the old corpus's, and another split would put sentences it trained on into
    validation or test. A corpus moved that passes is recorded there from then on; the ``main`` rank
    says it moved."""
    saved, recorded = state["corpus"], state["train_config"].get("data_path")
    differ = [
        f"{split}: {digest[split]['pairs']} pairs (the interrupted run's: {saved[split]['pairs']})"
        if digest[split]["pairs"] != saved[split]["pairs"]
        else f"{split}: other pairs"
        for split in saved
        if digest.get(split) != saved[split]
    ]
    if differ and moved(recorded, cfg.data_path):
        raise ValueError(
            f"--resume {cfg.resume}: the corpus at {cfg.data_path} (--data-path) is not the interrupted "
            f"run's, which it read at {recorded}: {'; '.join(differ)}. A resumed run goes on with its "
            "tokenizers and its split of the same sentences: give --data-path the place of that corpus, or "
            "start a new run on this one (without --resume)"
        )
    if differ and not cfg.data_path:  # the same flags: the generator's code (Kiln, num2words) changed
        raise ValueError(
            f"--resume {cfg.resume}: the {cfg.corpus} generator makes other pairs with the interrupted "
            f"run's flags than it made for that run: {'; '.join(differ)}; this Kiln (or its num2words) "
            "writes some sentences differently from the version that began the run. A resumed run goes on "
            "with its tokenizers and its split of the same sentences: resume it with the version that began "
            "it, or start a new run (without --resume)"
        )
    if differ:
        where = cfg.data_path
        raise ValueError(
            f"--resume {cfg.resume}: the corpus ({where}) changed since the interrupted run: "
            f"{'; '.join(differ)}. A resumed run goes on with its tokenizers and its split of the same "
            "sentences: put the corpus back as it was, or start a new run on the new one (without --resume)"
        )
    if moved(recorded, cfg.data_path) and main:
        log.info("%s", moved_line(recorded, cfg.data_path, PROOF))


def rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    """This process's torch generators (dropout draws from them): the CPU's, and the CUDA device's."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def restore_rng(state: dict[str, torch.Tensor | None], device: torch.device) -> None:
    """Set this process's generators where ``rng_state`` left them (a device the run did not train on
    keeps its own: resumed elsewhere, the run goes on, though not bit for bit)."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def open_metrics(
    cfg: TranslateConfig, d: Dist, state: dict[str, Any] | None
) -> tuple[MetricsLogger | None, int]:
    """Rank 0's metrics file and how many records it starts with: a resumed run keeps the records the
    interrupted run had logged when it wrote its resume state (none if they are gone); a new run
    replaces an earlier run's files under its name at its first record or resume state, whichever
    comes first (``MetricsLogger.begin``): a run validating every ``--eval-every`` steps may finish an
    epoch before its first record, and its resume state must not then be removed as the earlier run's
    at that record."""
    out, name = Path(cfg.output_dir), cfg.name
    path = out / f"{name}.metrics.jsonl"
    if not d.is_main:
        return None, 0
    if state is None:
        return MetricsLogger(path, replacing=run_files(out, name)), 0
    earlier = resumed_metrics(cfg.resume)
    kept = read_metrics(earlier)[: state["records"]] if earlier.is_file() else []
    replacing = replaced_files(cfg.output_dir, name, cfg.resume)
    return MetricsLogger(path, replacing=replacing, records=kept), len(kept)


def resume_state(
    trainer: Any, epoch: int, stop: str | None, rngs: list, carried: list[float], batches: int = 0
) -> dict:
    """What ``trainer`` (a ``translate_loop.Trainer``) holds after ``epoch``, as plain tensors and
    dicts: ``rngs``, every rank's generators in rank order, ``carried``, the epoch's training loss
    and target tokens summed over the ranks (the loss a final validation logs)."""
    return {
        "task": "translate",
        "epoch": epoch,
        "batches": batches,  # of epoch ``epoch + 1``, trained before a validation in it stopped the run
        "stop": stop,
        "model_name": trainer.cfg.model,
        "model_args": trainer.model_args,
        "model": trainer.module.state_dict(),
        "optimizer": trainer.opt.state_dict(),
        "scheduler": trainer.sched.state_dict(),
        "scaler": trainer.amp.scaler.state_dict(),
        "best_state": trainer.best_state,
        "best": trainer.best,
        "stopper": {"best": trainer.stopper.best, "bad_epochs": trainer.stopper.bad_epochs},
        "step": trainer.step,
        "validated_step": trainer.validated_step,
        "records": trainer.records,
        "carried": carried,
        "rng": rngs,
        "train_time_s": trainer.elapsed(),
        "world_size": trainer.dist.world_size,  # the schedule counts this many processes' steps
        "tokenizers": trainer.tokenizers.to_dict(),  # a resumed run never trains them again
        "data": trainer.corpus.info,
        "corpus": trainer.digest,  # the pairs it trains, validates and tests on (check_same_corpus)
        "train_config": asdict(trainer.cfg),  # --resume's settings and refusals (resumed_config)
        RUN_ID_KEY: run_id(os.environ),  # a torchrun restart resumes its own job's only (restart_resume)
    }


def save_resume(state: dict[str, Any], cfg: TranslateConfig) -> Path:
    """Write ``<name>.resume.pt`` whole or not at all (a temporary file renamed over it)."""
    return save_checkpoint(state, Path(cfg.output_dir) / f"{cfg.name}.resume.pt")


def restore(trainer: Any, state: dict[str, Any]) -> None:
    """Continue the interrupted run in ``trainer`` (a ``translate_loop.Trainer``) after its last epoch:
    optimizer, schedule, scaler, counters, best weights, early stopping, the batch order and this
    rank's generators (its dropout draws); its clock goes on from the time it had trained, which
    ``--time-budget`` counts."""
    d = trainer.dist
    trainer.opt.load_state_dict(state["optimizer"])
    restore_scheduler(trainer.sched, state["scheduler"])
    restore_scaler(trainer.amp.scaler, state["scaler"])
    trainer.start_epoch, trainer.step = state["epoch"], state["step"]
    trainer.skip = state.get("batches", 0)  # a state written before they were recorded: none
    trainer.validated_step = state["validated_step"]
    trainer.best, trainer.best_state = dict(state["best"]), state["best_state"]
    trainer.stopper.best, trainer.stopper.bad_epochs = (
        state["stopper"]["best"],
        state["stopper"]["bad_epochs"],
    )
    trainer.finished = finished(state, trainer.cfg)
    trainer.batches.epoch = trainer.start_epoch  # each epoch's order is drawn from the seed and its number
    trainer.start -= state["train_time_s"]
    if d.is_main:  # the epoch's loss summed over the ranks: a final validation sums it again
        trainer.carried = tuple(state["carried"])
    restore_rng(state["rng"][d.rank], d.device)
    if not d.is_main:
        return
    at = f" (and {trainer.skip} batch(es) of epoch {trainer.start_epoch + 1})" if trainer.skip else ""
    log.info(
        "resuming %s after epoch %d of %d%s", trainer.cfg.name, trainer.start_epoch, trainer.cfg.epochs, at
    )
    if trainer.start_epoch >= trainer.cfg.epochs and not trainer.finished:
        log.info("nothing left to train (all %d epochs trained): writing its checkpoint", trainer.cfg.epochs)
    elif trainer.finished:
        what, going_on = nothing_left(state, trainer.cfg)
        log.info("nothing left to train (%s): writing its checkpoint; %s", what, going_on)


def nothing_left(state: dict[str, Any], cfg: TranslateConfig) -> tuple[str, str] | None:
    """Where the interrupted run has nothing left to train: what it trained, and how a run goes on."""
    if not finished(state, cfg) or state["epoch"] >= cfg.epochs:
        return all_trained(state, cfg.epochs)
    when = f"in epoch {state['epoch'] + 1}" if state.get("batches") else f"after epoch {state['epoch']}"
    if state["stop"] == PERFECT:
        return f"it had stopped {when} on a perfect validation", "nothing trains it on"
    if state["stop"] == TIME_BUDGET:
        what = f"it had stopped {when}, its --time-budget of {cfg.time_budget:g} min spent"
        return what, "a larger --time-budget, or 0, trains on"
    bad = state["stopper"]["bad_epochs"]
    what = f"it had stopped early {when} (no better BLEU for {bad} evaluations)"
    return what, "a larger --patience, or 0, trains on"


def complete(cfg: TranslateConfig, d: Dist) -> bool:
    """Whether the resumed run has nothing to do: nothing left to train, and its checkpoint written."""
    state = load_resume(cfg.resume, mmap=True, task="translate")
    checkpoint = Path(cfg.output_dir) / f"{cfg.name}.pt"
    trained = ("steps", state["step"])  # what _save records: no step follows the last resume state
    return run_complete(state, checkpoint, cfg.name, nothing_left(state, cfg), d, trained)


def finished(state: dict[str, Any], cfg: TranslateConfig) -> bool:
    """Whether the interrupted run had stopped where its resume state was written, leaving nothing to
    train: on a perfect validation, early, unless a longer ``--patience`` (or 0) is given now, or out
    of time, unless a ``--time-budget`` longer than the minutes it trained (or 0) is given now."""
    if state["stop"] == PERFECT:
        return True
    if state["stop"] == TIME_BUDGET:
        return 0 < 60.0 * cfg.time_budget <= state["train_time_s"]
    bad = state["stopper"]["bad_epochs"]
    return state["stop"] == EARLY_STOPPING and 0 < cfg.patience <= bad
