"""Operating-system names and the scheduling policy of the gateway's threads.

Python 3.11 names a thread for Python only: ``top -H``, ``ps -L``, a native profiler and
``/proc/<pid>/task/<tid>/comm`` show every thread of a gateway worker as ``python``. The gateway's own
threads (decode, batch execution, tokenization, model loading) call :func:`name_os_thread` as they
start, so their role shows outside Python too (``bench.frontend_cost`` reads each role's CPU that way).

:func:`set_cpu_policy` puts threads under Linux's ``SCHED_BATCH``, and :class:`BusyLoopPolicy` puts the
event loop's thread under it only while a decode thread of its process is busy (``--cpu-policy``,
``auto`` by default). A thread under ``SCHED_BATCH`` that wakes (the event loop on a request or an
answer) waits for the running one's time slice instead of preempting it, so a decode thread runs its
steps without being switched out a few times a request. On 2 cores, translation through two workers at
c=32 went from 1 607-1 825 to 2 116-2 290 sentences/s (fp32) and 2 520-2 860 to 3 211-3 400 (int8),
three alternating rounds each, with every thread under it; the decode threads alone under it gained
nothing (the waker decides). Every thread under it also delays the wake-ups classify's tail depends on
when the cores are full: with the bench's Python load client on the same cores, its open loop read
p99 95-143 ms against 17 ms, hence ``auto`` (docs/performance-log.md, thirtieth session).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from pathlib import Path
from typing import Literal

CpuPolicy = Literal["batch", "normal"]  # what set_cpu_policy applies (settings add "auto")

_PR_SET_NAME = 15  # prctl option (linux/prctl.h)
_applied: list[CpuPolicy] = []  # what set_cpu_policy last put this process under
NAME_BYTES = 15  # what Linux keeps of a thread's name (16 with the terminating NUL)
_prctl: list = []  # [] until the first call decides: [prctl function or None]


def name_os_thread(name: str | None = None) -> bool:
    """Name the calling thread ``name`` (default: its Python name) for the OS, cut to whole characters
    within :data:`NAME_BYTES` bytes; False where the OS keeps no such name (not Linux) or refused it."""
    if not _prctl:
        try:
            _prctl.append(ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None)
        except (OSError, AttributeError):
            _prctl.append(None)
    prctl = _prctl[0]
    if prctl is None:
        return False
    raw = os_name(threading.current_thread().name if name is None else name).encode()
    return prctl(_PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0) == 0


def os_name(name: str) -> str:
    """``name`` as the OS keeps it: cut to whole characters within :data:`NAME_BYTES` bytes (what
    ``top -H`` shows, and a start-up line can print beside what it stands for)."""
    return name.encode("utf-8", "replace")[:NAME_BYTES].decode("utf-8", "ignore")


def set_cpu_policy(policy: CpuPolicy) -> str | None:
    """Put every thread of this process under ``policy``: ``batch`` (``SCHED_BATCH``) or ``normal``
    (``SCHED_OTHER``), at nice level unchanged; threads and processes started afterwards inherit it.
    Threads already running (e.g. OpenBLAS's, started when numpy loads) are set one by one. Returns the
    policy in force, or None where the OS has no such policies (not Linux) or refused (an unprivileged
    process may always lower its own to ``SCHED_BATCH`` or return to ``SCHED_OTHER``)."""
    if policy not in ("batch", "normal"):
        raise ValueError(f"cpu policy {policy!r}: expected 'batch' or 'normal'")
    wanted = getattr(os, "SCHED_BATCH" if policy == "batch" else "SCHED_OTHER", None)
    if wanted is None or not hasattr(os, "sched_setscheduler"):
        return None
    try:
        os.sched_setscheduler(0, wanted, os.sched_param(0))  # the calling thread first: it starts the rest
    except OSError:
        return None
    tasks = Path("/proc/self/task")
    for task in tasks.iterdir() if tasks.is_dir() else ():
        try:
            os.sched_setscheduler(int(task.name), wanted, os.sched_param(0))
        except OSError:  # ended meanwhile, or not ours to change: it keeps its own
            continue
    _applied[:] = [policy]
    return policy


def applied_cpu_policy() -> CpuPolicy | None:
    """What :func:`set_cpu_policy` last put this process under (None: nothing yet), for a helper
    process to set for itself: it inherits the policy of the thread that starts it, which may be the
    event loop's while it is under ``SCHED_BATCH`` (:class:`BusyLoopPolicy`)."""
    return _applied[0] if _applied else None


class BusyLoopPolicy:
    """One thread (the event loop's) under ``SCHED_BATCH`` while any decode thread of the process is busy,
    back to ``SCHED_OTHER`` once all are idle: a translation's steps are not preempted by the loop's
    wake-ups, and classify alone keeps prompt ones. :meth:`busy` and :meth:`idle` are called by the decode
    threads as they start and stop stepping (a system call at each change of the count from or to 0).

    A thread the loop starts meanwhile inherits ``SCHED_BATCH`` (asyncio's default executor, which
    decodes gRPC classify inputs and renders /metrics): :meth:`idle` returns the Python threads that
    appeared since it last looked to ``SCHED_OTHER`` too, or they kept it for good. It reads Python's
    list of threads (~7 us with 30 threads), not ``/proc/self/task`` (~25 us, and a system call that
    let the GIL go: the decode thread then waited for it, 0.3-0.6 ms an idle); a thread native code
    started from the loop is not seen."""

    def __init__(self, tid: int) -> None:
        self.tid = tid
        self._busy = 0
        self._lock = threading.Lock()
        self.available = hasattr(os, "SCHED_BATCH") and hasattr(os, "sched_setscheduler")
        self._seen = _threads()  # threads running before any busy spell: under the process's own policy

    def _set(self, policy: int) -> None:
        try:
            os.sched_setscheduler(self.tid, policy, os.sched_param(0))
        except OSError:  # the thread ended, or the OS refused: it keeps what it has
            self.available = False

    def busy(self) -> None:
        with self._lock:
            self._busy += 1
            if self._busy == 1 and self.available:
                self._set(os.SCHED_BATCH)

    def idle(self) -> None:
        with self._lock:
            self._busy -= 1
            if self._busy == 0 and self.available:
                self._set(os.SCHED_OTHER)
                self._release_started()

    def _release_started(self) -> None:
        """Threads started since the last look that inherited ``SCHED_BATCH`` from the loop: ``SCHED_OTHER``."""
        tasks = _threads()
        for tid in tasks - self._seen:
            try:
                if os.sched_getscheduler(tid) == os.SCHED_BATCH:
                    os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
            except OSError:  # ended meanwhile
                continue
        self._seen = tasks


def _threads() -> set[int]:
    """The OS thread ids of this process's Python threads."""
    return {thread.native_id for thread in threading.enumerate() if thread.native_id is not None}


_loop_policies: dict[int, BusyLoopPolicy] = {}  # by the event loop's thread id
_loop_policies_lock = threading.Lock()


def busy_loop_policy(tid: int) -> BusyLoopPolicy:
    """The one :class:`BusyLoopPolicy` of the thread ``tid`` (shared by every scheduler it serves)."""
    with _loop_policies_lock:
        found = _loop_policies.get(tid)
        if found is None:
            found = _loop_policies[tid] = BusyLoopPolicy(tid)
        return found


async def start_loop_threads() -> None:
    """Start uvloop's thread pool now, before the models load, or stop in one line where the process
    may not start its threads. libuv starts its pool (``UV_THREADPOOL_SIZE``, 4) at the first name
    lookup, uvicorn's bind, and aborts the process where a thread cannot start: under a process or
    thread limit (a container's pids limit, ``ulimit -u``) that the models' threads had nearly
    reached, the gateway died of SIGABRT once they had loaded, with nothing in its log. Started
    first, the pool's threads count before the models', whose own failure to start one is an error
    that says so. Nothing on another event loop (asyncio's looks names up on its own executor)."""
    import asyncio

    loop = asyncio.get_running_loop()
    if not type(loop).__module__.startswith("uvloop"):
        return
    try:
        wanted = min(max(int(os.environ.get("UV_THREADPOOL_SIZE", "4")), 1), 1024)
    except ValueError:
        wanted = 4
    release, started = threading.Event(), []
    try:
        for _ in range(wanted):
            started.append(threading.Thread(target=release.wait, name="kiln-thread-probe", daemon=True))
            started[-1].start()
    except RuntimeError as exc:  # "can't start new thread": the limit leaves fewer than the pool needs
        raise SystemExit(
            f"the gateway cannot start its threads ({exc}, after {len(started) - 1} of the event loop's "
            f"{wanted}): raise the process's thread limit (a container's pids limit, ulimit -u)"
        ) from None
    finally:
        release.set()
        for thread in started:
            if thread.ident is not None:
                thread.join()
    await loop.getaddrinfo("127.0.0.1", None)  # starts the pool
