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

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


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
    while pending:
        current = pending.pop()
        try:
            rollup = (PROC / str(current) / "smaps_rollup").read_text()
            stat = (PROC / str(current) / "stat").read_text()
            children = (PROC / str(current) / "task" / str(current) / "children").read_text().split()
        except OSError:  # ended meanwhile, or no procfs
            continue
        pss_kib += int(next((line.split()[1] for line in rollup.splitlines() if line.startswith("Pss:")), 0))
        # after the command name (which may hold spaces and parentheses): state is field 3, and
        # utime, stime, cutime, cstime are fields 14 to 17
        fields = stat.rpartition(")")[2].split()
        ticks += sum(int(value) for value in fields[11:15])
        seen += 1
        pending += [int(child) for child in children]
    if not seen:
        return None
    return Usage(pss_bytes=pss_kib * 1024, cpu_seconds=ticks / CLOCK_TICKS, processes=seen)


def maker_prefix(prefix: str) -> str:
    """``prefix``, then this process's pid and pid namespace: the name's start of a file or directory that
    ``serving.workers.sweep_stale`` removes once its maker is gone (``kiln-metrics-123-ns4026531836-``).
    Without the namespace a gateway in another container sharing the directory (``/dev/shm`` under
    ``docker run --ipc=host``, a shared ``/tmp``) took a live gateway's pid for a dead one's, since no
    process of its own had it, and removed that gateway's metrics, boards and shared weights."""
    namespace = _pid_namespace()
    return f"{prefix}{os.getpid()}-" + (f"ns{namespace}-" if namespace is not None else "")


def maker_gone(tail: str) -> bool:
    """Whether the process named at the start of ``tail`` (a name past its prefix, see
    :func:`maker_prefix`) has ended; False where that cannot be told: no pid there, or another pid
    namespace's (a name without one, as older gateways wrote them, is taken for this namespace's)."""
    fields = tail.split("-")
    if not fields[0].isdigit():
        return False
    namespace = fields[1][2:] if len(fields) > 2 and fields[1].startswith("ns") else ""
    if namespace.isdigit() and int(namespace) != _pid_namespace():
        return False
    return not running(int(fields[0]))


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
