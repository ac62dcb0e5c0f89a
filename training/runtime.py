"""Where and how a training run computes, shared by the classifier and translator trainers.

``setup_dist`` joins the torchrun process group (gloo on CPU, nccl on CUDA) and picks this process's
device; an attempt torchrun restarts (``--max-restarts``) joins a group of its own, and its trainer
says what it does: a classifier resumes from the resume state its torchrun job's interrupted attempt
wrote (``training.resume.restart_resume``, which ``run_id`` tells from an earlier job's), a translator,
which keeps none, starts the run again. ``Amp`` is the run's mixed precision (autocast dtype and
gradient scaler), the same ``--amp`` flag in both trainers (``add_amp_flags``), on CUDA and on the CPU
alike. A run launched with more processes per node than visible GPUs stops with an error naming both
numbers, before any process touches a device that does not exist. A collective that outlasts the
process group's timeout (``--dist-timeout``: a rank hung, stopped or stuck in I/O) ends the run with
``CollectiveTimeout``, one line, instead of the backend's traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import logging
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# What a bare ``--amp`` means: fp16, what the classifier's ``--amp`` switch trained with on CUDA before it
# took a precision (``make demo GPU=1`` and older command lines keep their meaning).
AMP_BARE = "fp16"
# oneDNN's words when it has no kernel of the autocast dtype for an op on this CPU (an LSTM under bf16 or
# fp16 on a CPU without AVX512-BF16/AMX): a RuntimeError and a traceback at the first step, else.
ONEDNN_NO_KERNEL = "could not create a primitive"
NATIVE_CPU = {"bf16": "AVX512-BF16 or AMX", "fp16": "AVX512-FP16 or AMX-FP16"}  # the ISA oneDNN runs it in
# fairseq's floor: an fp16 GradScaler halves its scale (from 2**16) at every overflow, so below this some
# 30 steps in a row overflowed float16 and nothing trains any more; the run stops instead of spinning.
MIN_LOSS_SCALE = 1e-4
DIST_TIMEOUT_FLAG = "--dist-timeout"
# torch's own defaults (init_process_group's timeout), which an unset --dist-timeout keeps
DEFAULT_DIST_TIMEOUT_S = {"gloo": 1800.0, "nccl": 600.0}
# a timedelta holds up to ~8.6e13 s; a week is longer than any collective a healthy run waits for
MAX_DIST_TIMEOUT_S = 7 * 24 * 3600.0
# What an attempt torchrun restarts does when its trainer keeps no resume state (the translator's).
STARTS_AGAIN = (
    "every process starts this run again from its command line (this trainer keeps no resume state); "
    "files the interrupted attempt wrote under this --name are replaced as an earlier run's are"
)
# torchrun's run id where a rendezvous or --master-port is given without --rdzv-id (--standalone, and one
# node without those flags, draw a uuid): every such job has it, so it tells no job's files from another's.
NO_RUN_ID = "none"
# gloo's own words when a send or receive of a collective ran out of time (a plain RuntimeError)
GLOO_TIMEOUT = re.compile(r"Timed out waiting \d+ ?ms for (send|recv) operation")


class CollectiveTimeout(RuntimeError):
    """A collective operation (or joining the process group) waited longer than the group's timeout
    for another rank: the run ends with one line naming ``--dist-timeout``, not gloo's traceback."""


class TrainingDiverged(ValueError):
    """The training loss or the weights went NaN or inf: the run stops at once, every rank together,
    and writes no checkpoint from those weights (a checkpoint already on disk is left as it was)."""


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


def setup_dist(
    device: str = "auto", timeout_s: float | None = None, on_restart: str | None = STARTS_AGAIN
) -> Dist:
    """Join the process group when WORLD_SIZE > 1 and pick the device (see ``pick_device``); its
    collectives wait ``timeout_s`` seconds for the other ranks (None: ``DEFAULT_DIST_TIMEOUT_S``).
    ``on_restart``: what a restarted attempt does, said by rank 0 as it joins (None: the trainer says it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_launch(os.environ)
    chosen = pick_device(device)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    timeout = timedelta(seconds=dist_timeout_s(timeout_s, backend))
    if world > 1 and not dist.is_initialized():
        # before the group exists: this module's functions take ``group=group.WORLD`` as a default
        # argument, so importing it later (DDP does, through torch._dynamo) pins the default group,
        # which ``teardown`` could then never destroy
        importlib.import_module("torch.distributed.nn")
        join_group(backend, timeout, on_restart)
    return Dist(dist.get_rank() if world > 1 else 0, world, chosen, timeout)


def dist_timeout_s(timeout_s: float | None, backend: str) -> float:
    """``--dist-timeout`` in seconds, or torch's default for ``backend`` when unset."""
    return DEFAULT_DIST_TIMEOUT_S[backend] if timeout_s is None else float(timeout_s)


def check_dist_timeout(timeout_s: float | None) -> None:
    """Refuse a ``--dist-timeout`` that is not a number of seconds in (0, ``MAX_DIST_TIMEOUT_S``]:
    0 or less would fail the first collective, a huge one overflows torch's timedelta."""
    if timeout_s is None:
        return
    if not (math.isfinite(timeout_s) and 0 < timeout_s <= MAX_DIST_TIMEOUT_S):
        raise ValueError(
            f"{DIST_TIMEOUT_FLAG} must be a number of seconds in (0, {MAX_DIST_TIMEOUT_S:g}], got {timeout_s}"
        )


def is_collective_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` is a process group's timeout: gloo's "Timed out waiting ...ms for recv operation"
    (a plain RuntimeError), or torch's distributed errors (the store's "wait timeout after ...ms" as a
    rank joins a group, NCCL's blocking wait) that say they timed out."""
    text = str(exc)
    if isinstance(exc, dist.DistError):
        return "timeout" in text.lower() or "timed out" in text.lower()
    return isinstance(exc, RuntimeError) and GLOO_TIMEOUT.search(text) is not None


def timeout_message(timeout_s: float, after: str) -> str:
    """The line of a run whose collective timed out: how long it waited, the flag, and ``after`` (what
    is left of the run: its resume state, or nothing)."""
    return (
        f"a collective operation waited {timeout_s:g} s ({DIST_TIMEOUT_FLAG}) for another torchrun rank, "
        "which never came: a rank is hung, stopped (SIGSTOP, a debugger), stuck in I/O, or much slower "
        f"than the others (then raise {DIST_TIMEOUT_FLAG}); {after}"
    )


@contextlib.contextmanager
def collective_timeouts(timeout_s: float | None, device: str, after: Callable[[], str]) -> Iterator[None]:
    """Turn a process group's timeout raised inside into ``CollectiveTimeout`` (``timeout_message``,
    ``after()`` saying what the run leaves); other errors pass as they are."""
    try:
        yield
    except RuntimeError as exc:
        if not is_collective_timeout(exc):
            raise
        backend = "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"
        raise CollectiveTimeout(timeout_message(dist_timeout_s(timeout_s, backend), after())) from exc


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


def attempt_prefix(env: Mapping[str, str]) -> str:
    """The store prefix of this attempt's process groups. torchrun keeps one store for all the attempts
    of a job, and torch names a job's groups alike in every attempt: a restarted rank would read the
    addresses the killed attempt's ranks left there and fail to connect ("Gloo connectFullMesh failed
    ... Connection refused") or wait on a dead one, so a restart never got past its process group."""
    return f"kiln/attempt_{restart_count(env)}/"


def run_id(env: Mapping[str, str]) -> str | None:
    """This torchrun job's id (``TORCHELASTIC_RUN_ID``: ``--rdzv-id``, a fresh uuid under ``--standalone``
    or on one node), the same in every attempt and rank of the job; None outside torchrun or where it is
    ``NO_RUN_ID``, which names no one job."""
    value = (env.get("TORCHELASTIC_RUN_ID") or "").strip()
    return None if value in ("", NO_RUN_ID) else value


def restart_line(restarts: int, what: str) -> str:
    """Rank 0's line of an attempt torchrun restarted: which restart, and ``what`` the run does now."""
    return f"torchrun restart {restarts} (--max-restarts): {what}"


def join_group(backend: str, timeout: timedelta | None = None, on_restart: str | None = STARTS_AGAIN) -> None:
    """Join the default process group through torchrun's (env://) store, under ``attempt_prefix``;
    a restarted attempt's rank 0 says ``on_restart`` (what the run does now), unless None (its trainer
    says it once it has decided). ``timeout`` (None: torch's default) bounds every wait of the group's
    collectives, and of joining it."""
    store, rank, world = next(dist.rendezvous("env://", **({"timeout": timeout} if timeout else {})))
    dist.init_process_group(
        backend,
        store=dist.PrefixStore(attempt_prefix(os.environ), store),
        rank=rank,
        world_size=world,
        timeout=timeout,
    )
    restarts = restart_count(os.environ)
    if restarts and rank == 0 and on_restart:
        log.warning("%s", restart_line(restarts, on_restart))


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


def any_rank(flag: bool, d: Dist) -> bool:
    """True on every rank when ``flag`` is true on at least one (keeps ranks' decisions in step)."""
    return flag if d.world_size == 1 else all_sum([float(flag)], d)[0] > 0


def mean_over_ranks(values: list[float], d: Dist) -> list[float]:
    """Each value's mean over the ranks, in one collective (none in a single process). NaN or inf on
    one rank makes the mean NaN or inf on every rank: the ranks' decisions on it stay in step."""
    if d.world_size == 1:
        return list(values)
    return [v / d.world_size for v in all_sum(values, d)]


def divergence(loss: float, stepped: bool, scaler: torch.amp.GradScaler) -> str | None:
    """Why a training step shows the run has diverged, or None. A NaN or inf loss on a step the optimizer
    took (without fp16 every step is taken) has put NaN or inf into the gradients, and so the weights; a
    step an fp16 GradScaler skipped left the weights as they were, unless skips drove its scale below
    ``MIN_LOSS_SCALE``."""
    if stepped and not math.isfinite(loss):
        return f"the training loss is {loss}"
    if scaler.is_enabled() and scaler.get_scale() < MIN_LOSS_SCALE:
        return (
            f"the fp16 loss scale fell to {scaler.get_scale():.3g} (below {MIN_LOSS_SCALE:g}): the loss or "
            "its gradients overflow float16 at step after step, so nothing trains"
        )
    return None


def non_finite_weights(module: nn.Module) -> list[str]:
    """Names of the module's floating-point weights and buffers that hold NaN or inf."""
    return [
        name
        for name, tensor in module.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def weights_divergence(module: nn.Module) -> str | None:
    """Why the weights cannot be kept (some hold NaN or inf, named), or None: checked before a
    validation can take them as the best."""
    bad = non_finite_weights(module)
    if not bad:
        return None
    named = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
    return f"the weights hold NaN or inf ({named}: {len(bad)} tensors)"


def divergence_advice(lr: float, clip_flag: str, clipped: bool, fp16_flag: str | None) -> str:
    """What to try after a diverged run: a lower learning rate, gradient clipping if off, no fp16."""
    tips = [f"a lower --lr (this run's: {lr:g})"]
    if not clipped:
        tips.append(f"{clip_flag} 1")
    if fp16_flag:
        tips.append(fp16_flag)
    return "try " + ", or ".join(tips)


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


def add_amp_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, default: str, no_amp: str = "float32"
) -> None:
    """``--amp [bf16|fp16]`` (bare: ``AMP_BARE``) and ``--no-amp``, the same in both trainers; ``default``
    says what an unset flag means, ``no_amp`` what ``--no-amp`` is for (it stores False: float32 even
    where an unset ``--amp`` means another precision)."""
    parser.add_argument(
        "--amp",
        nargs="?",
        const=AMP_BARE,
        choices=sorted(AMP_DTYPES),
        help=f"mixed precision, on CUDA or the CPU: bf16 autocast, or fp16 autocast with a GradScaler; a bare "
        f"--amp is {AMP_BARE}. The CPU runs bf16 fast with AVX512-BF16 or AMX, correctly but slowly without; "
        f"a model with an op the CPU has no kernel of that precision for is refused at its first step "
        f"(default: {default})",
    )
    parser.add_argument("--no-amp", dest="amp", action="store_const", const=False, help=no_amp)


def amp_choice(amp: str | bool | None) -> str | None:
    """A run's precision as ``bf16``, ``fp16`` or None (float32) from a flag's value: False or None is
    float32, and True (the classifier's ``--amp`` switch before it took a precision, in a resume file
    or a config) is ``AMP_BARE``."""
    if amp is None or amp is False:
        return None
    if amp is True:
        return AMP_BARE
    if amp not in AMP_DTYPES:
        raise ValueError(f"unknown --amp {amp!r}; choose from {sorted(AMP_DTYPES)}")
    return amp


class AmpUnsupported(ValueError):
    """Autocast of the chosen dtype cannot run this model on this device: the run stops with one line
    naming ``--amp`` instead of training in float32 under its name, or ending in a traceback."""


@dataclass
class Amp:
    """Mixed precision of a run: autocast dtype (None = float32) and the gradient scaler fp16 needs."""

    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    device_type: str

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The forward's autocast; an op oneDNN has no kernel of this dtype for on this CPU ends the run
        with ``AmpUnsupported`` (``--amp``), not its traceback."""
        if self.dtype is None:
            yield
            return
        try:
            with torch.autocast(self.device_type, dtype=self.dtype):
                yield
        except RuntimeError as exc:
            if self.device_type != "cpu" or ONEDNN_NO_KERNEL not in str(exc):
                raise
            raise AmpUnsupported(no_cpu_kernel(self.dtype, str(exc))) from exc


def no_cpu_kernel(dtype: torch.dtype, error: str) -> str:
    """The line of a run whose model has an op this CPU runs in no ``dtype`` kernel (oneDNN's ``error``)."""
    flag = next(name for name, value in AMP_DTYPES.items() if value is dtype)
    return (
        f"--amp {flag}: this CPU has no {flag} kernel for an operation of this model under autocast "
        f"(oneDNN: {error.split('. ')[0].strip()}); train it here without --amp, or on CUDA, or on a CPU "
        f"with native {flag} instructions ({NATIVE_CPU[flag]})"
    )


def check_autocast(device_type: str, dtype: torch.dtype, flag: str) -> None:
    """Refuse an autocast ``dtype`` torch cannot run on ``device_type``: torch only warns and turns
    autocast off (the run would train in float32 under ``flag``'s name), or raises its own error
    (bf16 on a GPU older than Ampere)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.autocast(device_type, dtype=dtype):
                enabled = torch.is_autocast_enabled(device_type)
        except RuntimeError as exc:
            raise ValueError(f"{flag} on {device_type}: {exc}") from None
    if not enabled:
        said = " ".join(" ".join(str(w.message) for w in caught).split())
        raise ValueError(f"{flag}: torch's autocast does not run {dtype} on {device_type} ({said})")


def make_amp(amp: str | bool | None, device: torch.device) -> Amp:
    """``bf16`` or ``fp16`` autocast on ``device`` (fp16 with a GradScaler), or float32 (see
    ``amp_choice``); a dtype torch's autocast cannot run on that device is refused (``check_autocast``)."""
    choice = amp_choice(amp)
    dtype = AMP_DTYPES[choice] if choice else None
    if dtype is not None:
        check_autocast(device.type, dtype, f"--amp {choice}")
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    return Amp(dtype, scaler, device.type)


def optimizer_step(
    scaler: torch.amp.GradScaler,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    parameters: Iterable[torch.Tensor],
    clip_norm: float | None = None,
) -> bool:
    """Step the optimizer through ``scaler`` (the gradients of ``parameters`` unscaled before clipping
    them to ``clip_norm``), then the schedule; True when the optimizer stepped.

    An fp16 scaler skips the step when the scaled gradients overflowed (and halves its scale): the
    schedule then waits too, else each skipped step spent one of its values (warm-up steps, above all,
    as the first steps are the likely ones to overflow) and torch warned that ``lr_scheduler.step()``
    came before ``optimizer.step()``. Every rank of a DDP run holds the same all-reduced gradients, so
    all skip alike and their schedules stay in step.
    """
    if clip_norm:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(parameters, clip_norm)
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    stepped = scaler.get_scale() >= scale  # an overflow, and only an overflow, lowers the scale
    if stepped:
        scheduler.step()
    return stepped


def restore_scaler(scaler: torch.amp.GradScaler, state: dict) -> None:
    """Continue the interrupted run's gradient scaler. A run that trained without fp16 saved a disabled
    scaler's empty state, which an enabled one refuses (RuntimeError): turning ``--amp`` on when the
    run resumes (on a GPU, after starting on a CPU) starts the scaler from its initial scale instead."""
    if state or not scaler.is_enabled():
        scaler.load_state_dict(state)
    else:
        log.info("the resumed run trained without fp16 gradient scaling: its scaler starts afresh")


def weights_hash(module: nn.Module) -> str:
    """sha256 over every parameter, in name order: equal across ranks iff DDP kept them in sync."""
    digest = hashlib.sha256()
    for name, param in sorted(module.named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
