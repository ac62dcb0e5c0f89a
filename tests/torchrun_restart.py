"""A trainer's CLI with one rank killed once, as an OOM killer or a lost node ends it, launched by
torchrun with ``--max-restarts``: ``python -m tests.torchrun_restart <trainer module> <trainer args>``.

Environment: ``KILN_TEST_KILL_AT``, ``module:attr``: rank 1 of torchrun's first attempt SIGKILLs itself
at a call of that function once the file ``KILN_TEST_KILL_AFTER`` exists; ``KILN_TEST_EPOCHS_LOG``, a
folder where each rank appends ``<attempt> <epoch>`` (torchrun's restart count, the 0-based epoch) to
``rank<N>.epochs`` at every ``training.classify_loop.train_epoch`` call: which epochs each attempt trained.
"""

from __future__ import annotations

import functools
import importlib
import os
import runpy
import signal
import sys
from pathlib import Path


def kill_rank1_once(target: str, after: Path) -> None:
    """``module:attr``: rank 1 of the first attempt dies of SIGKILL at a call once ``after`` exists."""
    module_name, attr = target.split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, attr)

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        first_attempt = os.environ["TORCHELASTIC_RESTART_COUNT"] == "0"
        if os.environ["RANK"] == "1" and first_attempt and after.exists():
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(module, attr, wrapped)


def log_epochs(folder: Path) -> None:
    """Each rank appends ``<attempt> <epoch>`` to ``rank<N>.epochs`` as it starts to train an epoch."""
    from training import classify_loop

    original = classify_loop.train_epoch
    path = folder / f"rank{os.environ.get('RANK', '0')}.epochs"

    @functools.wraps(original)
    def wrapped(run, epoch):
        with path.open("a") as fh:
            fh.write(f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')} {epoch}\n")
        return original(run, epoch)

    classify_loop.train_epoch = wrapped


def read_epochs(path: Path) -> dict[int, list[int]]:
    """A ``rank<N>.epochs`` file as {attempt: [epochs it started to train, in order]}."""
    attempts: dict[int, list[int]] = {}
    for attempt, epoch in (line.split() for line in path.read_text().splitlines() if line.strip()):
        attempts.setdefault(int(attempt), []).append(int(epoch))
    return attempts


if __name__ == "__main__":
    if "KILN_TEST_KILL_AT" in os.environ:
        kill_rank1_once(os.environ["KILN_TEST_KILL_AT"], Path(os.environ["KILN_TEST_KILL_AFTER"]))
    if "KILN_TEST_EPOCHS_LOG" in os.environ:
        log_epochs(Path(os.environ["KILN_TEST_EPOCHS_LOG"]))
    trainer, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    runpy.run_module(trainer, run_name="__main__", alter_sys=True)
