"""A training run's resume state (``--resume``), shared by both trainers: where it lives beside a
checkpoint, and reading it, a damaged, truncated or foreign file, or another task's, refused with a
``CheckpointError`` naming it; the resume state an attempt torchrun restarts (``--max-restarts``)
continues by itself: its own job's, never an earlier job's under the same ``--name``
(``restart_resume``); and what a resumed run checks and keeps: the number of processes, its
``--epochs`` (never fewer than it trained; as many with its checkpoint written: nothing to do), data
found again at its place or moved (``moved``), the interrupted run's records, the files it replaces,
and what a run stopped mid-epoch leaves."""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from training.checkpoint import CheckpointError, check_archive, load_checkpoint
from training.mixed_precision import amp_choice
from training.runtime import (
    Dist,
    any_rank,
    gather_shards,
    restart_count,
    restart_line,
    run_id,
    setup_dist,
    teardown,
)
from training.tracking import run_files

log = logging.getLogger(__name__)

Config = TypeVar("Config")  # a trainer's resolved config: TrainConfig or TranslateConfig


def resume_path(path: str | os.PathLike) -> Path:
    """``x.resume.pt`` itself, or the ``.resume.pt`` next to a final ``x.pt`` checkpoint."""
    path = Path(path)
    return path if path.name.endswith(".resume.pt") else path.with_name(f"{path.stem}.resume.pt")


def resumed_output_dir(resume: str | os.PathLike, name: str, recorded: str | None = None) -> str:
    """The ``--output-dir`` of a run named ``name`` resumed from ``resume`` without one: the one the
    interrupted run ``recorded`` where its files are still there, else the resume state's folder less
    the folders that ``name`` holds. The state's folder alone put a run named ``runs/a`` (its state
    ``out/runs/a.resume.pt``) in ``out/runs/runs/a.*``: files beside its own, which it never replaced."""
    state = resume_path(resume)
    if recorded and (Path(recorded) / f"{name}.resume.pt").resolve() == state.resolve():
        return recorded
    folder, inner = state.parent.parts, Path(name).parent.parts
    if inner and folder[len(folder) - len(inner) :] == inner:
        return str(Path(*folder[: len(folder) - len(inner)]))
    return str(state.parent)


# What classify_loop.save_resume writes and a resumed run reads.
RESUME_KEYS = ("epoch", "model_name", "model_args", "model", "optimizer", "scheduler", "data")
# What each task's resume state holds at the least: a translator's adds its tokenizers and settings
# (translate_resume.resume_state), and says its task; a state without "task" is a classifier's.
TASK_KEYS = {
    "classify": RESUME_KEYS,
    "translate": (*RESUME_KEYS, "task", "tokenizers", "train_config", "corpus", "rng"),
}
TRAINERS = {"classify": "classifier", "translate": "translator"}
# The torchrun job (runtime.run_id) whose run wrote a resume state: None outside torchrun, or unknown.
RUN_ID_KEY = "torchelastic_run_id"
# What every rank of a restarted attempt does when it does not resume.
STARTS_AGAIN = "every process starts this run again from its command line"
# Why a job whose torchrun run id is runtime.NO_RUN_ID never resumes a restart by itself.
NO_JOB_ID = (
    "torchrun's run id is 'none' (a rendezvous or --master-port given without --rdzv-id), which every such "
    "job shares, so this job's resume state cannot be told from an earlier job's under this --name; give "
    "torchrun a job-unique --rdzv-id to resume a restart (--standalone, and one node without those flags, "
    "draw one)"
)


def load_resume(path: str, *, mmap: bool = False, task: str | None = "classify") -> dict[str, Any]:
    """The resume state behind ``--resume path`` (``mmap`` reads only what is used: resolve's peek);
    a damaged, truncated or foreign file, or one of a ``task`` other than the one given (None: any),
    is a ``CheckpointError`` naming it."""
    file = resume_path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--resume {path}: no resume state at {file}")
    if not zipfile.is_zipfile(file):
        raise CheckpointError(
            f"--resume {path}: {file} is not a resume state (torch.save writes a zip archive; this is "
            "not one, or a truncated one)"
        )
    try:
        check_archive(file)
    except CheckpointError as exc:
        raise CheckpointError(f"--resume {path}: {exc}") from None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - any failure to read it means "not a usable resume state"
        reason = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"--resume {path}: {file} is not a readable resume state ({reason})") from exc
    check_task(path, file, state, task)
    return state


def check_task(path: str, file: Path, state: Any, task: str | None) -> None:
    """Refuse a resume state of another task than ``task`` (naming the trainer that continues it), or
    one that lacks what ``task``'s trainer writes (any task's least, where ``task`` is None)."""
    held = state.get("task", "classify") if isinstance(state, dict) else None
    if task and held != task and held in TASK_KEYS and all(key in state for key in RESUME_KEYS):
        raise CheckpointError(
            f"--resume {path}: {file} is a {TRAINERS[held]}'s resume state ({state['model_name']}), not a "
            f"{TRAINERS[task]}'s: python -m training.{held} --resume {path} continues it"
        )
    missing = [
        key for key in TASK_KEYS.get(task, RESUME_KEYS) if not isinstance(state, dict) or key not in state
    ]
    if missing:
        which = f"{TRAINERS[task]} " if task else ""
        writer = f"; training.{task} writes one after every epoch" if task else ""
        raise CheckpointError(
            f"--resume {path}: {file} is not a {which}resume state (it lacks {missing}){writer}"
        )


def resumed_amp(state: dict[str, Any]) -> str | None:
    """The precision (``bf16``, ``fp16`` or None: float32) the run of a resume state trained with. A file
    written while the classifier's ``--amp`` was a switch holds True, which meant fp16 on CUDA but was
    ignored on a CPU (float32, and a disabled GradScaler's empty state): the scaler's state tells them apart."""
    amp = (state.get("train_config") or {}).get("amp")
    if amp is True and not state.get("scaler"):
        return None
    return amp_choice(amp)


def job_epoch(path: Path, job: str, world_size: int) -> tuple[int, str]:
    """The epoch after which the resume state at ``path`` holds torchrun job ``job``'s run on
    ``world_size`` processes, or 0 and why it holds none: this rank's view of the file."""
    if not path.is_file():
        return 0, f"no epoch of this job's interrupted attempt had finished (no resume state at {path})"
    try:
        state = load_resume(str(path), mmap=True, task=None)  # the job's own trainer wrote it
    except (OSError, ValueError) as exc:  # CheckpointError is a ValueError
        return 0, f"the resume state at {path} cannot be read ({exc})"
    held = state.get(RUN_ID_KEY)
    if held != job:
        return 0, (
            f"no epoch of this job's interrupted attempt had finished: {path} is another run's resume state "
            f"(torchrun run id {held or 'none'}; this job's is {job}), which this run replaces at its first "
            "epoch's end"
        )
    if state.get("world_size") != world_size:
        return 0, (
            f"{path} holds a run on {state.get('world_size')} process(es), this attempt runs on {world_size} "
            "(the job's nodes changed): a run resumes on as many processes only"
        )
    return int(state["epoch"]), ""


def restart_resume(path: Path, d: Dist) -> Path | None:
    """On an attempt torchrun restarted (``--max-restarts``): ``path``, the run's resume state, when
    this torchrun job's interrupted attempt wrote it (``RUN_ID_KEY``) and every rank reads it so;
    else None, on every rank alike: the run starts again from its command line. Rank 0 says which.

    Under a job id every rank of a group takes part in the decision, whatever its own restart count:
    torchelastic counts a restart on the node whose worker failed only, so a healthy node's ranks may
    read 0 in a restarted group, and a collective some ranks skipped would hang the others."""
    restarts = restart_count(os.environ)
    job = run_id(os.environ)  # the same on every node of the job
    if job is None or (d.world_size == 1 and not restarts):
        if restarts and d.is_main:
            log.warning("%s", restart_line(restarts, f"{STARTS_AGAIN}: {NO_JOB_ID}"))
        return None
    epoch, why = job_epoch(path, job, d.world_size)
    views = gather_shards([(epoch, restarts)], d)  # every rank's view, in rank order, on every rank
    restarts = max(seen_restarts for _, seen_restarts in views)
    if not restarts:  # the job's first attempt on every node
        return None
    others = [rank for rank, (seen, _) in enumerate(views) if seen != epoch]
    if epoch and others:
        why = (
            f"rank 0 reads this job's resume state after epoch {epoch} at {path}, rank(s) "
            f"{', '.join(map(str, others))} do not (is {path.parent} on a filesystem every node shares?)"
        )
    resumes = bool(epoch) and not others
    if d.is_main:
        what = (
            f"the run resumes from {path}, the resume state this torchrun job's interrupted attempt wrote"
            if resumes
            else f"{STARTS_AGAIN}: {why}"
        )
        log.warning("%s", restart_line(restarts, what))
    return path if resumes else None


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


def check_resumed_epochs(resume: str, epochs: int) -> None:
    """Refuse an ``--epochs`` below the epochs the resume state has trained, naming both, before any
    data is read: a resumed run goes on after its last epoch and cannot give any back (its weights,
    schedule and records hold them all). As many is the run as it is (``run_complete``)."""
    done = load_resume(resume, mmap=True, task=None)["epoch"]
    if epochs < done:
        raise ValueError(
            f"--resume {resume}: --epochs {epochs} is fewer than the {done} epochs the interrupted run has "
            f"trained: a resumed run goes on after its last epoch and cannot undo any; give --epochs {done} "
            f"(the run as it is) or more, or start a new run of --epochs {epochs} (without --resume)"
        )


def all_trained(state: dict[str, Any], epochs: int) -> tuple[str, str] | None:
    """Where a resume state has trained all ``epochs``: what it trained, and how a run goes on."""
    if state["epoch"] < epochs:
        return None
    return f"it has trained its {epochs} epoch(s)", "a larger --epochs trains on"


def holds_result(checkpoint: Path, state: dict[str, Any], trained: tuple[str, int]) -> bool:
    """Whether ``checkpoint`` holds the result of the run of resume state ``state``, bit for bit: its
    best weights, or its last ones (where it kept no best, or a translator's validation of its last
    steps after the resume state, ``--eval-every``, found them best), written once the run had trained
    all of ``state``: its metrics record ``trained`` (a classifier's epochs, a translator's steps). A
    checkpoint of the run before ``--epochs`` or patience lengthened it holds the same best weights
    where the epochs after added no better ones, but that shorter run's config, metrics and curves."""
    try:
        ckpt = load_checkpoint(checkpoint)
    except (OSError, ValueError):  # none there, or not a checkpoint: the run writes its own
        return False
    key, value = trained
    if (ckpt.get("metrics") or {}).get(key) != value:
        return False
    kept = (state.get("best_state"), state["model"])
    return any(same_weights(ckpt["state_dict"], weights) for weights in kept if weights)


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state dicts hold the same tensors, bit for bit."""
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def run_complete(
    state: dict[str, Any],
    checkpoint: Path,
    name: str,
    done: tuple[str, str] | None,
    d: Dist,
    trained: tuple[str, int],
) -> bool:
    """Whether a resumed run (``--resume``, or a torchrun restart) has nothing to do, every rank alike:
    nothing left to train (``done``: what the interrupted run trained and how a run goes on; None: it
    trains on) and ``checkpoint``, where it writes its result, holds it already on every rank's view
    (``holds_result``, ``trained``); rank 0 says so, and nothing is trained or written. Else it trains
    what is left, or, with nothing left, writes the checkpoint that the interrupted run (killed after its
    last resume state) did not."""
    mine = done is not None and holds_result(checkpoint, state, trained)
    complete = mine if d.world_size == 1 else not any_rank(not mine, d)
    if complete and d.is_main:
        what, going_on = done
        log.info(
            "%s: the run is complete, nothing to train or write: %s and %s holds its result; %s",
            name,
            what,
            checkpoint,
            going_on,
        )
    return complete


def place(path: str) -> str:
    """A data path (each comma-separated part) made absolute: where the data is, from any directory."""
    return ",".join(os.path.abspath(os.path.expanduser(part)) for part in path.split(","))


def moved(recorded: str | None, now: str | None) -> bool:
    """Whether a resumed run reads its data at another place than the interrupted run recorded."""
    return bool(recorded and now) and place(recorded) != place(now)


def moved_line(recorded: str, now: str, proof: str) -> str:
    """What a resumed run says of data it found moved and checked (``proof``: what matched)."""
    return f"the data moved from {recorded} to {now} and its content matches the interrupted run's ({proof})"


def check_data_found(resume: str, recorded: str, files: list[str], proof: str) -> None:
    """Refuse to resume where the data the interrupted run read at ``recorded`` (``files``) is gone,
    before reading any, naming the way on: a moved data location given with ``--data-path``."""
    missing = [file for file in files if not Path(file).expanduser().exists()]
    if missing:
        which = "" if missing == [recorded] else f" ({missing[0]} does not exist)"
        raise FileNotFoundError(
            f"--resume {resume}: the interrupted run's data at {recorded} is gone{which}: if it moved, give "
            f"its new place with --data-path (the resumed run checks {proof} against the interrupted run's)"
        )


def changed_model_args(given: dict[str, Any], held: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Each ``--model-arg`` given with another value than the resume state's ``held`` ones, as (key,
    given, held); a tuple from the command line equals the file's list (``as_lists``)."""
    return [
        (key, value, held.get(key))
        for key, value in given.items()
        if as_lists(value) != as_lists(held.get(key))
    ]


def as_lists(value: Any) -> Any:
    """``value`` with tuples as lists, so ``(1, 2)`` from the command line equals a stored ``[1, 2]``."""
    if isinstance(value, (list, tuple)):
        return [as_lists(v) for v in value]
    return value


def resumed_metrics(resume: str) -> Path:
    """The interrupted run's ``<name>.metrics.jsonl``, beside its resume state: the records of its
    epochs, whatever ``--name`` and ``--output-dir`` the resumed run writes under; beside the file a
    link to the state names (``--resume latest.resume.pt``), whose own folder has none: the resumed run
    started its metrics anew, its earlier epochs' records gone from the file and the curves."""
    state = resume_path(resume)
    state = state.resolve() if state.is_symlink() else state
    return state.with_name(state.name.removesuffix(".resume.pt") + ".metrics.jsonl")


def replaced_files(output_dir: str, name: str, resume: str | None) -> list[Path]:
    """The files of another run under this run's name and output directory, which it replaces as it
    writes its own (``MetricsLogger``): none where it resumes the run whose files they are."""
    out = Path(output_dir)
    if resume and resume_path(resume).resolve() == (out / f"{name}.resume.pt").resolve():
        return []
    return run_files(out, name)


def resume_left(output_dir: str, name: str, resume: str | None) -> str:
    """What a run that stopped mid-epoch leaves to continue from: the resume state under its name
    (written whole after its last finished epoch, or an earlier run's, which it has not replaced), else
    the one it resumed from."""
    places = [Path(output_dir) / f"{name}.resume.pt"]
    places += [resume_path(resume)] if resume else []
    for path in places:
        try:
            epoch = load_resume(str(path), mmap=True, task=None)["epoch"]
        except (OSError, ValueError):  # none there, or not a resume state
            continue
        return f"{path} holds the run after epoch {epoch}, whole: --resume {path} continues from there"
    return f"no epoch had finished, so there is no resume state at {places[0]}"


def start_run(
    config: Config,
    restarted: Callable[[Config, Dist], Config],
    complete: Callable[[Config, Dist], bool],
) -> tuple[Dist, Config, Path, bool]:
    """How both trainers' runs begin, inside their ``collective_timeouts``: join the process group (if
    any), continue the job's last finished epoch in an attempt torchrun restarted (``restarted``), and
    see whether a resumed run has nothing to do (``complete``: then the group is left at once). The
    process group, the config it runs, the checkpoint's path, and whether the run is complete."""
    d = setup_dist(config.device, config.dist_timeout)
    config = restarted(config, d)
    path = Path(config.output_dir) / f"{config.name}.pt"
    if config.resume and complete(config, d):  # before the data: nothing to train or write
        teardown(d)
        return d, config, path, True
    return d, config, path, False
