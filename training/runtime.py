"""Where a training run computes, shared by the classifier and translator trainers: the torchrun process
group, this process's device, the collectives the trainers run from Python, and DistributedDataParallel.

``setup_dist`` joins the torchrun process group (gloo on CPU, nccl on CUDA) and picks this process's
device; an attempt torchrun restarts (``--max-restarts``) joins a group of its own, and its trainer
resumes from the resume state its torchrun job's interrupted attempt wrote
(``training.resume.restart_resume``, which ``run_id`` tells from an earlier job's). A run launched with more processes per node than visible GPUs
stops with an error naming both numbers, before any process touches a device that does not exist. The
group's collectives wait ``--dist-timeout`` (``training.dist_timeout``); a run's mixed precision
is ``training.mixed_precision``'s, and its stop when it diverges ``training.divergence``'s.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from kiln.cli import listed
from training.attempt_store import attempt_store
from training.dist_timeout import dist_timeout_s
from training.divergence import TrainingDiverged
from training.mixed_precision import AmpUnsupported

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
# torchrun's run id where a rendezvous or --master-port is given without --rdzv-id (--standalone, and one
# node without those flags, draw a uuid): every such job has it, so it tells no job's files from another's.
NO_RUN_ID = "none"
# cuBLAS's workspace setting under which its kernels (an LSTM's or GRU's under cuDNN's RNN among them)
# give the same bits run after run (PyTorch's reproducibility notes); cuBLAS reads it when it starts.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"
T = TypeVar("T")


@dataclass
class Dist:
    """Where this process runs: its rank among ``world_size`` data-parallel workers and its device."""

    rank: int
    world_size: int
    device: torch.device
    timeout: timedelta | None = None  # the process groups' (None: torch's default for the backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` (which must exist) or ``auto`` (CUDA when available) for this local rank."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose from {DEVICES}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available")
    if not (device == "cuda" or (device == "auto" and torch.cuda.is_available())):
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1))
    visible = torch.cuda.device_count()
    if max(local_world, local_rank + 1) > visible:
        raise ValueError(
            f"torchrun started {local_world} processes on this node but only {visible} CUDA GPU(s) are "
            f"visible: use --nproc_per_node {visible} or fewer, or --device cpu"
        )
    return torch.device(f"cuda:{local_rank}")


def setup_dist(device: str = "auto", timeout_s: float | None = None) -> Dist:
    """Join the process group when WORLD_SIZE > 1 and pick the device (see ``pick_device``); its
    collectives wait ``timeout_s`` seconds for the other ranks (None: ``DEFAULT_DIST_TIMEOUT_S``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_launch(os.environ)
    chosen = pick_device(device)
    if chosen.type == "cuda":
        deterministic_cuda(os.environ)
        torch.cuda.set_device(chosen)
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    timeout = timedelta(seconds=dist_timeout_s(timeout_s, backend))
    if world > 1 and not dist.is_initialized():
        # before the group exists: this module's functions take ``group=group.WORLD`` as a default
        # argument, so importing it later (DDP does, through torch._dynamo) pins the default group,
        # which ``teardown`` could then never destroy
        importlib.import_module("torch.distributed.nn")
        join_group(backend, timeout)
    return Dist(dist.get_rank() if world > 1 else 0, world, chosen, timeout)


def deterministic_cuda(env: MutableMapping[str, str]) -> None:
    """Hold a CUDA run to the same weights, bit for bit, from the same command, as a CPU run is (README,
    "Training is reproducible"): seeds alone do not, as cuDNN otherwise may pick a convolution algorithm
    that sums with atomics (in another order each run, so other weights: PyTorch's Conv2d and
    reproducibility notes), and cuDNN's LSTM and GRU need cuBLAS's fixed workspace (PyTorch's RNN
    notes). Set before cuBLAS starts; a ``CUBLAS_WORKSPACE_CONFIG`` of the user's is kept."""
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)


def check_launch(env: Mapping[str, str]) -> None:
    """Refuse a ``WORLD_SIZE`` above 1 without the rest of a launcher's variables, naming them: those
    left over from another job in the shell made the run fail in torch's rendezvous (or wait there)."""
    world = int(env.get("WORLD_SIZE") or 1)
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
    if world > 1 and missing:
        raise ValueError(
            f"WORLD_SIZE={world} is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
            "(left over from another job?): launch several processes with torchrun (torchrun "
            f"--nproc_per_node {world} -m ...), or unset WORLD_SIZE and RANK to train in one process"
        )


def reports_errors(env: Mapping[str, str]) -> bool:
    """Whether this process prints the run's error line and its result: rank 0 of a multi-process run
    (so one line, not one a rank), or a process that cannot be one of several (``WORLD_SIZE`` not above
    1, as ``setup_dist`` reads it, or no ``MASTER_ADDR``): a ``RANK`` left over from another job in the
    shell made every error of a lone run silent, exit 2."""
    rank = (env.get("RANK") or "0").strip()
    try:
        alone = int(env.get("WORLD_SIZE") or 1) <= 1
    except ValueError:  # refused by check_launch, in a line this process must print
        alone = True
    return rank == "0" or alone or not env.get("MASTER_ADDR")


def restart_count(env: Mapping[str, str]) -> int:
    """How many times torchrun has restarted this run's processes (``--max-restarts``): 0 at first."""
    return int(env.get("TORCHELASTIC_RESTART_COUNT") or 0)


def run_id(env: Mapping[str, str]) -> str | None:
    """This torchrun job's id (``TORCHELASTIC_RUN_ID``: ``--rdzv-id``, a fresh uuid under ``--standalone``
    or on one node), the same in every attempt and rank of the job; None outside torchrun or where it is
    ``NO_RUN_ID``, which names no one job."""
    value = (env.get("TORCHELASTIC_RUN_ID") or "").strip()
    return None if value in ("", NO_RUN_ID) else value


def restart_line(restarts: int, what: str) -> str:
    """Rank 0's line of an attempt torchrun restarted: which restart, and ``what`` the run does now."""
    return f"torchrun restart {restarts} (--max-restarts): {what}"


def join_group(backend: str, timeout: timedelta | None = None) -> None:
    """Join the default process group through torchrun's (env://) store, under a prefix of this attempt's
    own that every rank of every node agrees on (``training.attempt_store``: the store holds the earlier
    attempts' groups under the same names, and torchrun's restart count differs between nodes). A
    restarted attempt's trainer says what it does once it has decided (``resume.restart_resume``).
    ``timeout`` (None: torch's default) bounds every wait of the group's collectives, and of joining it."""
    store, rank, world = next(dist.rendezvous("env://", **({"timeout": timeout} if timeout else {})))
    dist.init_process_group(
        backend,
        store=attempt_store(store, rank, world, os.environ),
        rank=rank,
        world_size=world,
        timeout=timeout,
    )


def teardown(d: Dist) -> None:
    """Leave the process group (if this run joined one), every rank together: call it after a clean finish.

    Call it as soon as training is over, before the work rank 0 does alone (test evaluation, the
    checkpoint, plots): a rank waiting in this barrier meanwhile would hit the process group's timeout
    (10 minutes for nccl). The barrier lets no rank destroy its group while another still uses it.
    Destroying the default group joins its worker threads (see ``wrap_ddp`` for why DDP has a group of
    its own), so none of them is left holding a tensor Python made when the interpreter shuts down.
    After an error, do not call it: the other ranks may never reach the barrier, and torchrun stops
    them anyway.
    """
    if d.world_size > 1:
        leave_group()


def leave_group() -> None:
    """Leave the process group, if any, every rank together (``teardown``'s barrier). Also after a
    diverged run was reported: every rank raised ``TrainingDiverged`` at the same step, so all meet
    here, and rank 0 only once its line is printed (the first rank to exit makes torchrun stop the
    others, rank 0 included)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_sum(values: list[float], d: Dist) -> list[float]:
    """Sum per-rank counters over all ranks (identity in a single process)."""
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    if d.world_size > 1:
        dist.all_reduce(t)
    return t.tolist()


def gather_shards(shard: list, d: Dist) -> list:
    """Every rank's ``items[rank::world_size]`` put back into one list, in ``items`` order, on every rank.

    Lets all ranks share work (such as decoding the validation split) instead of waiting in a
    collective while rank 0 does it alone, which could outlast the process group's timeout.
    """
    if d.world_size == 1:
        return list(shard)
    shards: list[list | None] = [None] * d.world_size
    dist.all_gather_object(shards, list(shard))
    return merge_shards(shards)


def merge_shards(shards: list[list]) -> list:
    """The inverse of ``[items[r::n] for r in range(n)]``: the items back in their order."""
    total = sum(len(s) for s in shards)
    return [shards[i % len(shards)][i // len(shards)] for i in range(total)]


def read_on_every_rank(read: Callable[[], T], d: Dist) -> T:
    """``read()`` (this rank's reading of the run's data), whose refusal every rank learns of: under
    torchrun, a rank whose data was missing or bad (a node without the ``--data-path`` file) exited
    alone and unheard, while the others waited in their next collective for ``--dist-timeout`` (30 min
    by default), then blamed a hung rank. Where every rank refused alike, each raises its own refusal (as
    one process does: rank 0 prints it); else each raises the first refusing rank's, named."""
    if d.world_size == 1:
        return read()
    result, error = None, None
    try:
        result = read()
    except (ValueError, KeyError, FileNotFoundError) as exc:
        error = exc
    said = gather_shards([None if error is None else str(error)], d)  # every rank's, in rank order
    refused = [(rank, text) for rank, text in enumerate(said) if text is not None]
    if error is not None and len(refused) == d.world_size and len({text for _, text in refused}) == 1:
        raise error
    if refused:
        rank, text = refused[0]
        raise ValueError(
            f"torchrun rank {rank} of {d.world_size} could not read the data: {text} (each node reads "
            "--data-path itself: every node must see the same data at the same path)"
        )
    return result


def any_rank(flag: bool, d: Dist) -> bool:
    """True on every rank when ``flag`` is true on at least one (keeps ranks' decisions in step)."""
    return flag if d.world_size == 1 else all_sum([float(flag)], d)[0] > 0


def mean_over_ranks(values: list[float], d: Dist) -> list[float]:
    """Each value's mean over the ranks, in one collective (none in a single process). NaN or inf on
    one rank makes the mean NaN or inf on every rank: the ranks' decisions on it stay in step."""
    if d.world_size == 1:
        return list(values)
    return [v / d.world_size for v in all_sum(values, d)]


def show_progress(wanted: bool, d: Dist) -> bool:
    """A progress bar only when asked, on rank 0, and on a terminal (not in logs or CI output)."""
    return wanted and d.is_main and sys.stderr.isatty()


def wrap_ddp(module: nn.Module, d: Dist) -> nn.Module:
    """The module itself in one process, its DistributedDataParallel wrapper under torchrun.

    The wrapper gets a process group of its own (the same ranks and backend), because DDP keeps its
    group alive after ``destroy_process_group``: a gloo group it holds keeps its worker threads until
    the process exits. The collectives Python runs (``all_sum``, ``gather_shards``, the barrier) stay
    on the default group, which ``teardown`` really destroys. Otherwise a worker still dropping a
    finished collective's tensor (a Python object: freeing it takes the GIL) as the interpreter shut
    down was ended mid-destructor: the rank aborted at exit ("terminate called without an active
    exception") after a good run, now and then on a loaded machine. DDP's own collectives (bucket
    all-reduces, coalesced broadcasts) run on tensors made in C++, which need no GIL to free.
    """
    if d.world_size == 1:
        return module
    group = dist.new_group(backend=dist.get_backend(), timeout=d.timeout)  # else torch's default again
    return DDP(module, device_ids=None if d.device.type == "cpu" else [d.device], process_group=group)


class UnusedParameters(ValueError):
    """Trainable parameters a step's loss left without a gradient (``check_all_trained``). Every rank
    that finds them prints its line, not rank 0 alone: where a forward's use of a parameter depends on
    its batch, rank 0 may have used them all and be held in DDP's reduction, and the one rank that
    refused was silent (torchrun's exit code 2 and rank 0's "Connection closed by peer" were all)."""


class RankFailed(ValueError):
    """A refusal one rank raised while it trained or evaluated its own share of the data (a model of the
    user's refusing a batch, a bad example): every rank that raises it prints its line. Rank 0 alone
    printed refusals, so one on another rank ended the job with torchrun's "exitcode: 2" and rank 0's
    "Connection closed by peer ... check the logs of the remote worker", whose log said nothing."""


@contextmanager
def rank_errors(d: Dist) -> Iterator[None]:
    """Under torchrun, a ``ValueError`` or ``KeyError`` raised inside (the ranks' training loop) as
    ``RankFailed``, which the trainers' command prints on the rank that raised it, whichever it is.
    Errors every rank raises at the same step keep their type, and their one line on rank 0: a diverged
    run (``TrainingDiverged``) and a precision the CPU has no kernel for (``AmpUnsupported``)."""
    if d.world_size == 1:
        yield
        return
    try:
        yield
    except (TrainingDiverged, AmpUnsupported, RankFailed, UnusedParameters):
        raise
    except (ValueError, KeyError) as exc:
        raise RankFailed(str(exc)) from exc


def check_all_trained(module: nn.Module, d: Dist) -> None:
    """Under torchrun, after a step's backward: refuse a model with trainable parameters its training
    loss did not use, naming them. One process trains such a model (those parameters just keep their
    values), but DistributedDataParallel waits for every parameter's gradient: the next step stopped
    every rank with torch's "Expected to have finished reduction in the prior iteration" traceback,
    whose advice (``find_unused_parameters=True``) no flag of the trainers reaches. No collective: where
    a forward's use of a parameter depends on its data, a rank that used it all may be waiting in DDP's
    reduction of it already."""
    if d.world_size == 1:
        return
    unused = [name for name, p in module.named_parameters() if p.requires_grad and p.grad is None]
    if unused:
        shown = listed(unused, 5)
        raise UnusedParameters(
            f"the model's parameter(s) {shown} get no gradient from the training loss (its training "
            "forward does not use them): under torchrun, DistributedDataParallel needs every trainable "
            "parameter used in each step; remove them, freeze them (requires_grad_(False)), or train "
            "in one process"
        )


def weights_hash(module: nn.Module) -> str:
    """sha256 over every parameter, in name order: equal across ranks iff DDP kept them in sync."""
    digest = hashlib.sha256()
    for name, param in sorted(module.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
