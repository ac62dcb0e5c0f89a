"""One export at a time per repository: an advisory lock that every export holds from its plan to its
last write.

Two exports into one repository at once used to interleave: each checks entry ownership up front
(``entry_plan``) and rewrites the repository's ``.kiln_refused.json`` by read-modify-write, so a second
export could take a name the first had just claimed, or drop the first one's refusal record. The lock
is ``flock`` on ``<repository>/.kiln_export.lock`` (a file: Triton takes only directories for models),
released by the kernel when its holder exits, however it exits; a second export waits for it, saying
whose it is. The holder removes the file as it lets go, so a repository at rest holds none; a waiter
that then gets the lock of a removed file opens the path again (the file it holds must be the one the
path names). Within a process it is re-entrant (``export_all`` holds it across the
``export_checkpoint`` calls that take it again) and threads take turns.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from kiln.lock_files import holder, note_holder, still_named

log = logging.getLogger(__name__)

LOCK_NAME = ".kiln_export.lock"


class _Held:
    """This process's hold on one repository's lock: the thread holding it, how deeply, the file."""

    def __init__(self) -> None:
        self.turn = threading.RLock()  # threads of this process take turns
        self.depth = 0
        self.fd: int | None = None


_HELD: dict[Path, _Held] = {}
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def writer_lock(repository: Path) -> Iterator[None]:
    """Hold ``repository``'s export lock for the ``with`` block, waiting (with a warning naming the
    holder) while another export holds it. ``repository`` must exist (``check_repository``)."""
    key = Path(repository).resolve()
    with _HELD_GUARD:
        held = _HELD.setdefault(key, _Held())
    with held.turn:
        if held.depth == 0:
            held.fd = _acquire(key)
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
            if held.depth == 0 and held.fd is not None:
                with contextlib.suppress(OSError):  # still held: a waiter finds it gone and reopens
                    (key / LOCK_NAME).unlink()
                os.close(held.fd)  # closing the descriptor releases the flock
                held.fd = None


def _open(path: Path) -> tuple[int, bool]:
    """The lock file's descriptor, and whether it may be written (a lock file another user made can
    still be locked, read-only, in a repository shared by a group)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644), True
    except PermissionError:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC), False


def _acquire(repository: Path) -> int:
    path, warned = repository / LOCK_NAME, False
    while True:
        fd, writable = _open(path)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not warned:
                    log.warning(
                        "%s is being written by another export (%s); waiting for it to finish",
                        repository,
                        holder(fd),
                    )
                    warned = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if still_named(fd, path):
                if writable:
                    _note_holder(fd, path)
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # its holder removed it as it let go: the next export's lock is a new file


def _note_holder(fd: int, path: Path) -> None:
    """Write who holds the lock, for a waiter's warning. Only a courtesy: on a full disk (ENOSPC, a
    quota) the lock is held all the same, so an export with nothing to write still succeeds there and
    one that must write fails on its first artifact, naming it."""
    try:
        note_holder(fd)
    except OSError as exc:
        log.debug("cannot note this export as the holder of %s: %s", path, exc.strerror or exc)
