"""What a process and every process under it use together, read from Linux's procfs.

The gateway is several processes (``--workers``' parent and its workers, each worker's JSON helper),
and its workers map one copy of each model's weights (serving/execution/shared_weights.py). Resident
sizes summed over them would count a model's pages once for every worker that maps them, so memory
here is the proportional set size (``Pss``: a page that n processes map counts 1/n to each), which
sums to what the tree holds. CPU time is each live process's own plus what its exited children used
(``cutime``/``cstime``, counted once they are reaped), so the sum only grows while the tree runs.

Reading costs what the kernel takes to walk the processes' mappings: ~0.4 ms for a small process, 14
ms for a two-worker gateway holding a 44M-parameter translator. So the gateway reads it only when
``/metrics`` is scraped, and off its event loop (serving/protocol/metrics.py). Where there is no
procfs (not Linux) there is nothing to read: :func:`usage` gives None.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# The field after the namespace in the name of a directory its maker holds locked while it lives
# (:func:`make_held_dir`): ``kiln-weights-123-ns4026531836-held-x1y2z3``.
HELD = "held"
_held: dict[Path, int] = {}  # the directories this process made held, and the descriptors holding them


@dataclass(frozen=True)
class Usage:
    pss_bytes: int  # proportional set size, summed
    cpu_seconds: float  # user + system, the live processes' and their reaped children's
    processes: int


def usage(pid: int | None) -> Usage | None:
    """:class:`Usage` of process ``pid`` and every process under it; None where procfs has none of it
    (not Linux, or the process is gone)."""
    if pid is None:
        return None
    pending, seen, pss_kib, ticks = [pid], 0, 0, 0
    visited: set[int] = set()  # a child that moved between two threads' lists as one ended: once
    while pending:
        current = pending.pop()
        if current in visited:
            continue
        visited.add(current)
        try:
            stat = (PROC / str(current) / "stat").read_text()
        except OSError:  # ended meanwhile, or no procfs
            continue
        # after the command name (which may hold spaces and parentheses): state is field 3, and
        # utime, stime, cutime, cstime are fields 14 to 17; an exited child not yet reaped (a zombie)
        # too: its time reaches its parent's cutime only once reaped, and left out meanwhile the sum
        # fell, which Prometheus takes for a counter's reset
        fields = stat.rpartition(")")[2].split()
        ticks += sum(int(value) for value in fields[11:15])
        try:
            rollup = (PROC / str(current) / "smaps_rollup").read_text()
            children = _children(current)
        except OSError:  # a zombie (no memory to read: no longer a process that runs), or ended meanwhile
            continue
        pss_kib += int(next((line.split()[1] for line in rollup.splitlines() if line.startswith("Pss:")), 0))
        seen += 1
        pending += children
    if not seen:
        return None
    return Usage(pss_bytes=pss_kib * 1024, cpu_seconds=ticks / CLOCK_TICKS, processes=seen)


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started, from any of its threads: procfs lists a child under the thread
    that forked it while that thread lives (``task/<tid>/children``), and the JSON helper's forkserver
    is started from a thread of the pool (serving/protocol/json_offload.py), so reading the main
    thread's list alone left it, its resource tracker and the helper out of every figure."""
    children = []
    for task in (PROC / str(pid) / "task").iterdir():  # OSError where the process is gone
        with contextlib.suppress(OSError):  # a thread that ended meanwhile: its children moved
            children += [int(child) for child in (task / "children").read_text().split()]
    return children


def maker_prefix(prefix: str) -> str:
    """``prefix``, then this process's pid and pid namespace: the name's start of a file or directory that
    ``serving.workers.sweep_stale`` removes once its maker is gone (``kiln-metrics-123-ns4026531836-``).
    Without the namespace a gateway in another container sharing the directory (``/dev/shm`` under
    ``docker run --ipc=host``, a shared ``/tmp``) took a live gateway's pid for a dead one's, since no
    process of its own had it, and removed that gateway's metrics, boards and shared weights."""
    namespace = _pid_namespace()
    return f"{prefix}{os.getpid()}-" + (f"ns{namespace}-" if namespace is not None else "")


def make_held_dir(prefix: str, where: str | Path | None = None) -> Path:
    """A new directory in ``where`` (default: the temporary one) named as :func:`maker_prefix` names it
    and marked :data:`HELD`: this process holds a lock on it (``flock``) until it ends or calls
    :func:`release`, so that :func:`maker_gone` can tell its maker ended from any pid namespace. Without
    it, a gateway killed in a container that then restarted (a new pid namespace, /tmp kept) left its
    shared weights, as large as its models, to every later start: none could tell whether the maker
    of another namespace's name still ran. It gets its marked name only once locked (a rename)."""
    start = maker_prefix(prefix)
    made = Path(tempfile.mkdtemp(prefix=start, dir=where))
    held = made.with_name(f"{start}{HELD}-{made.name[len(start) :]}")
    fd = None
    try:
        fd = os.open(made, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a directory no one else has opened yet
        os.rename(made, held)
    except OSError:
        if fd is not None:
            os.close(fd)
        os.rmdir(made)
        raise
    _held[held] = fd
    return held


def holds(path: Path) -> bool:
    """Whether this process holds ``path`` (made by :func:`make_held_dir`, not released)."""
    return Path(path) in _held


def release(path: Path) -> None:
    """Stop holding ``path`` (:func:`make_held_dir`), once it is removed; nothing if it is not held."""
    fd = _held.pop(Path(path), None)
    if fd is not None:
        os.close(fd)


def maker_gone(tail: str, path: Path | None = None) -> bool:
    """Whether the process named at the start of ``tail`` (a name past its prefix, see
    :func:`maker_prefix`) has ended; False where that cannot be told: no pid there, or another pid
    namespace's (a name without one, as older gateways wrote them, is taken for this namespace's).
    A name marked :data:`HELD` is told by its lock, from any namespace: the kernel drops it when its
    maker ends, however it ends (``path``: the file so named; without it, by pid as others are)."""
    fields = tail.split("-")
    if not fields[0].isdigit():
        return False
    if path is not None and HELD in fields[1:3]:
        return _unheld(path)
    namespace = fields[1][2:] if len(fields) > 2 and fields[1].startswith("ns") else ""
    if namespace.isdigit() and int(namespace) != _pid_namespace():
        return False
    return not running(int(fields[0]))


def _unheld(path: Path) -> bool:
    """Whether no process holds ``path``'s lock (:func:`make_held_dir`): then its maker has ended. False
    where it cannot be opened (removed meanwhile: nothing to sweep), or is no directory: anyone may put
    a FIFO so named in a shared /tmp or /dev/shm, and opening it waited for a writer, so every gateway
    started on the machine hung in its sweep, whoever started it (a link is not followed either)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: its maker (or a child it forked) runs
        return False
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return True


def _pid_namespace() -> int | None:
    """The inode naming this process's pid namespace; None without procfs."""
    try:
        return os.stat(PROC / "self" / "ns" / "pid").st_ino
    except OSError:
        return None


def running(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
