"""How long a torchrun run's collectives wait for the other ranks (``--dist-timeout``: torch's default,
the range a value must be in), and how a run ends when one waited longer: ``CollectiveTimeout``, one
line naming the flag and what the run leaves to continue from, instead of the backend's traceback (a
rank hung, stopped or stuck in I/O). A module of its own, under ``training.runtime``'s process group:
the trainers check the flag, and say that line, outside the group."""

from __future__ import annotations

import argparse
import contextlib
import math
import re
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist

DIST_TIMEOUT_FLAG = "--dist-timeout"
# torch's own defaults (init_process_group's timeout), which an unset --dist-timeout keeps
DEFAULT_DIST_TIMEOUT_S = {"gloo": 1800.0, "nccl": 600.0}
# a timedelta holds up to ~8.6e13 s; a week is longer than any collective a healthy run waits for
MAX_DIST_TIMEOUT_S = 7 * 24 * 3600.0


def add_dist_timeout_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--dist-timeout SECONDS``, the same in both trainers."""
    parser.add_argument(
        DIST_TIMEOUT_FLAG,
        type=float,
        metavar="SECONDS",
        help="under torchrun, how long a rank waits in a collective (and to join the process group) for "
        "the others before the run ends with an error line naming this flag: a hung or stopped rank "
        f"(default: torch's, {DEFAULT_DIST_TIMEOUT_S['gloo']:g} s on CPU (gloo), "
        f"{DEFAULT_DIST_TIMEOUT_S['nccl']:g} s on CUDA (nccl), where torch's watchdog may end the process "
        "first); the resume state of the last finished epoch stays whole",
    )


# gloo's own words when a send or receive of a collective ran out of time (a plain RuntimeError)
GLOO_TIMEOUT = re.compile(r"Timed out waiting \d+ ?ms for (send|recv) operation")


class CollectiveTimeout(RuntimeError):
    """A collective operation (or joining the process group) waited longer than the group's timeout
    for another rank: the run ends with one line naming ``--dist-timeout``, not gloo's traceback."""


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
