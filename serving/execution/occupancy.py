"""Whether a model run would have the machine's cores to itself: the lone-request session's condition.

A lone request runs on a session with an intra-op thread per core (``OrtOptions.lone_request_threads``),
which only pays while nothing else runs. With several gateway workers (``serving.workers``) the other
processes' runs are invisible to a batcher, and a wide run beside them oversubscribes the cores:
measured with perf_analyzer (resnet18, 2 workers, open loop at 850 requests/s on 2 cores), p50
1.8 ms without lone sessions against 4.1-4.5 ms with them. So every run is counted here, and each
worker publishes its count in one byte of a file the workers share (the parent creates it).
"""

from __future__ import annotations

import errno
import mmap
import os
import tempfile
import threading
from pathlib import Path

from serving.process_tree import maker_prefix


class Occupancy:
    """The model runs in flight in this process, published at ``index`` of a shared board (or not)."""

    def __init__(self, board: Path | None = None, index: int = 0) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._map: mmap.mmap | None = None
        self._index = index
        if board is not None:
            with open(board, "r+b") as file:
                self._map = mmap.mmap(file.fileno(), 0)
            if not 0 <= index < len(self._map):
                raise ValueError(
                    f"worker index {index} is outside the board {board} ({len(self._map)} workers)"
                )
            # the whole board as it reads while this process runs exactly one model and no other does
            self._only_mine = bytes(index) + b"\x01" + bytes(len(self._map) - index - 1)

    def enter(self) -> None:
        """A run starts in this process."""
        with self._lock:
            self._count += 1
            if self._map is not None:
                self._map[self._index] = min(self._count, 255)

    def leave(self) -> None:
        """A run of this process ended."""
        with self._lock:
            self._count -= 1
            if self._map is not None:
                self._map[self._index] = min(self._count, 255)

    def alone(self) -> bool:
        """Whether the caller's run (entered) is the only one in this process and in every worker."""
        if self._count != 1:
            return False
        return self._map is None or self._map[:] == self._only_mine

    def idle(self) -> bool:
        """Whether no run is in flight in this process nor in any worker."""
        if self._count:
            return False
        return self._map is None or not any(self._map[:])

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


BOARD_PREFIX = "kiln-occupancy-"  # then the pid of the process that made it (serving.workers sweeps)


def create_board(workers: int) -> Path:
    """A zeroed board for ``workers`` processes, in shared memory where the system lets us write it
    (a page-cache file in the temporary directory otherwise: the same to the workers)."""
    return zeroed_file(maker_prefix(BOARD_PREFIX), workers, "occupancy board")


def zeroed_file(prefix: str, size: int, what: str) -> Path:
    """A new file of ``size`` zero bytes named ``prefix``..., in /dev/shm where the system lets us
    write it, else in the temporary directory (memory-mapped by several processes, the same to them).

    The zeros are written, not a sparse file made, so that a full filesystem says so here rather
    than by SIGBUS in a worker; a directory that cannot take them keeps nothing of the attempt."""
    tried = []
    for where in ("/dev/shm", tempfile.gettempdir()):
        try:
            return _write_zeros(prefix, size, where)
        except OSError as exc:  # no /dev/shm, not writable here, or full
            tried.append(f"{where}: {exc.strerror or exc}{_free_note(where)}")
    raise OSError(f"no room for the workers' {what} ({size} bytes) in {'; nor in '.join(tried)}")


_ZEROS_CHUNK = 1 << 20  # bytes written at a time


def _write_zeros(prefix: str, size: int, where: str) -> Path:
    """``size`` zero bytes in a new file of directory ``where``; the file is removed if they fail.
    A size beyond the room there fails (ENOSPC) before anything is written, and the zeros go out a
    chunk at a time: ``--workers 100000`` (a connections board of 80 GB) ended in a MemoryError
    traceback from one ``bytes(size)``, and a chunked write alone would have filled the disk first."""
    stat = os.statvfs(where)
    # a filesystem of no size (a tmpfs mounted size=0, a FUSE without statfs) reports 0 bytes free and
    # says nothing of its room: the machine's memory bounds it instead (such a tmpfs is memory)
    room = stat.f_bavail * stat.f_frsize if stat.f_blocks else _memory_bytes()
    if size > room:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    fd, name = tempfile.mkstemp(prefix=prefix, dir=where)
    try:
        with os.fdopen(fd, "wb") as file:
            zeros = bytes(min(size, _ZEROS_CHUNK))
            for start in range(0, size, _ZEROS_CHUNK):
                file.write(zeros[: size - start])
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def _memory_bytes() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def disk_space(where: str) -> tuple[int, int] | None:
    """The bytes free (to this user) and in all on ``where``'s filesystem; None where it cannot be read."""
    try:
        stat = os.statvfs(where)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize


def _free_note(where: str) -> str:
    """``where``'s free space as a clause of an error message (nothing where it cannot be read)."""
    space = disk_space(where)
    return "" if space is None else f" ({space[0] >> 10} KiB free)"
