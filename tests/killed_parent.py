"""Kill a parent process outright (``kill -9``, as the OOM killer does) and see whether what it started
ends with it; Linux only (procfs, pidfds). The processes a test notes are killed at its end, pass or fail,
so a failing test leaves nothing running."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path


def children(pid: int) -> list[int]:
    """The processes ``pid`` started that still run (procfs)."""
    found: list[int] = []
    for listed in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in listed.read_text().split()]
    return found


def said_pid(lines: Iterable[str], prefix: str) -> int | None:
    """The pid in the first of ``lines`` that reads ``<prefix><pid>``; None if none does (the output ended)."""
    for line in lines:
        if line.startswith(prefix):
            return int(line.split()[1])
    return None


def kill(process: subprocess.Popen) -> None:
    """End ``process`` outright (SIGKILL, no clean-up of its own) and reap it."""
    process.kill()
    process.wait()


def ends_within(pid: int, timeout_s: float) -> bool:
    """Whether process ``pid`` (not this one's child) ends within ``timeout_s``: its pidfd turns readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout_s)[0])
    finally:
        os.close(fd)


def running_on(pids: Iterable[int], timeout_s: float) -> list[int]:
    """Those of ``pids`` that have not ended ``timeout_s`` after the test asks (each given its own wait)."""
    return [pid for pid in pids if not ends_within(pid, timeout_s)]


@contextlib.contextmanager
def killed_at_end(parent: subprocess.Popen) -> Iterator[list[int]]:
    """A list for the test to note ``parent``'s processes in; at the end ``parent`` and each of them is
    killed, but a multiprocessing resource tracker: it ends by itself once they are gone, unlinking what
    it holds."""
    started: list[int] = []
    try:
        yield started
    finally:
        kill(parent)
        for pid in started:
            with contextlib.suppress(OSError):
                if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
