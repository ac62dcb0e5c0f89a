"""The workers' metric files (prometheus_client's multiprocess mode) with their room reserved before use.

prometheus_client keeps each process's values in a sparse file it memory-maps, and grows it by
``truncate``: a page is only taken from the filesystem when a value is first written there. Where that
filesystem has filled since the gateway started (a container's 64 MiB ``/dev/shm`` taken by something
else), the write is answered with SIGBUS, and ``--workers`` lost a worker, then the whole gateway, at the
next request that made a new series. :class:`ReservedMmapedDict` reserves a file's room
(``posix_fallocate``) before it maps or grows it, so a full filesystem is an ``ENOSPC`` that it reports
in one line, keeping the series it had no room for in this process alone (missing from ``/metrics``),
and the worker serves on.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from prometheus_client import mmap_dict, values

log = logging.getLogger(__name__)

SHM_ADVICE = "give it more room (docker run --shm-size, a memory-backed emptyDir on /dev/shm) or point"
OTHER_ADVICE = "free some room there or point"


class ReservedMmapedDict(mmap_dict.MmapedDict):
    """A metric file whose pages are allocated before they are mapped; series that find no room are
    kept in this process (``_unshared``) and reported once a process."""

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        self._unshared: dict[str, tuple[float, float]] = {}
        if not read_mode:
            try:
                _reserve_file(filename, mmap_dict._INITIAL_MMAP_SIZE)
            except OSError as exc:  # other than ENOSPC: a filesystem that cannot reserve, used as it is
                if exc.errno == errno.ENOSPC:
                    self._f = self._m = None  # no file: every series of it stays in this process
                    self._fname, self._positions, self._capacity = filename, {}, 0
                    return
        super().__init__(filename, read_mode)

    def _init_value(self, key: str) -> None:
        """As prometheus_client's, the file's new pages allocated first (``ENOSPC``: kept unshared)."""
        if self._m is not None:
            capacity = self._capacity
            while self._used + _entry_bytes(key) > capacity:
                capacity *= 2
            try:
                if capacity > self._capacity:
                    _reserve(self._f.fileno(), capacity)
            except OSError as exc:  # as above: other errors leave the file as prometheus_client grows it
                full = exc.errno == errno.ENOSPC
            else:
                full = False
            if not full:
                super()._init_value(key)
                return
        _report_full(self._fname)
        self._unshared[key] = (0.0, 0.0)

    def read_value(self, key: str) -> tuple[float, float]:
        if key not in self._positions and key not in self._unshared:
            self._init_value(key)
        if key in self._unshared:
            return self._unshared[key]
        return super().read_value(key)

    def write_value(self, key: str, value: float, timestamp: float) -> None:
        """As prometheus_client's, at its cost for a series in the file (one lookup: every ``inc`` and
        ``observe`` writes; the checks and ``super()`` made a write ~1.7x the base class's)."""
        pos = self._positions.get(key)
        if pos is None:  # a new series, or one kept in this process
            if key not in self._unshared:
                self._init_value(key)
            if key in self._unshared:
                self._unshared[key] = (value, timestamp)
                return
            pos = self._positions[key]
        mmap_dict._pack_two_doubles(self._m, pos, value, timestamp)


def _entry_bytes(key: str) -> int:
    """Bytes prometheus_client's ``_init_value`` appends for ``key``: its length, the key padded to 8,
    the value and the timestamp."""
    encoded = len(key.encode("utf-8"))
    return 4 + encoded + (8 - (encoded + 4) % 8) + 16


def _reserve_file(filename: str, size: int) -> None:
    """Allocate ``filename``'s pages up to its size, at least ``size`` (a new file is created); a new file
    that finds no room is left empty, as prometheus_client would have found it."""
    fd = os.open(filename, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _reserve(fd, max(os.fstat(fd).st_size, size))
    finally:
        os.close(fd)


def _reserve(fd: int, size: int) -> None:
    """Allocate the first ``size`` bytes of file ``fd`` (its size at least that); where that fails, the
    file keeps the size it had, as a failed ``posix_fallocate`` may have changed it."""
    had = os.fstat(fd).st_size
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:
        os.ftruncate(fd, had)
        raise


_REPORTED: set[Path] = set()  # the directories this process said were full


def _report_full(filename: str) -> None:
    """One error line a process and directory: what is full and what to do."""
    where = Path(filename).parent
    if where in _REPORTED:
        return
    _REPORTED.add(where)
    shm = str(where.resolve()).startswith("/dev/shm/")
    log.error(
        "no room for metrics in %s (%s is full): this process's new series are missing from /metrics; "
        "%s PROMETHEUS_MULTIPROC_DIR at a directory with room",
        where,
        "/dev/shm" if shm else "its filesystem",
        SHM_ADVICE if shm else OTHER_ADVICE,
    )


def install() -> None:
    """Make prometheus_client's multiprocess values use :class:`ReservedMmapedDict` in this process;
    called before the first metric is made (the values look the class up when they open a file)."""
    values.MmapedDict = ReservedMmapedDict
