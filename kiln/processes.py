"""Run a server as a subprocess until it answers ready, and always stop it (demo and benchmark)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from serving.workers import _stop_with_parent

# httpx keywords for a request to a server this machine started: http_proxy/HTTPS_PROXY/ALL_PROXY from the
# environment are not consulted (httpx, unlike curl, sends 127.0.0.1 to them unless NO_PROXY names it), so
# a proxy set for pip cannot answer, or refuse, a readiness probe the server itself would have answered.
LOCAL: dict[str, Any] = {"trust_env": False}
# gRPC channel arguments to the same effect (gRPC reads grpc_proxy, https_proxy and http_proxy too), with
# the message limits tritonclient sets where it is given no channel arguments (gRPC's own: 4 MB received)
LOCAL_GRPC: list[tuple[str, Any]] = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
]


@contextlib.contextmanager
def running(
    cmd: list[str],
    ready_url: str,
    *,
    timeout_s: float = 120.0,
    log_path: Path | None = None,
    never_ready: Callable[[], str | None] | None = None,
) -> Iterator[subprocess.Popen]:
    """Start ``cmd``, poll ``ready_url`` until it answers 200, yield the process, terminate it on exit.

    Output goes to ``log_path`` when given (else to this process's streams); a process that exits or
    is not ready in time raises RuntimeError naming the command and where its log is, and so does one
    whose ``never_ready`` (asked each time ``ready_url`` answers, but not 200) names why it never will be.
    A caller killed past its ``finally`` (SIGKILL, SIGHUP) still stops it: see :func:`child_options`.
    """
    import httpx

    out = open(log_path, "wb") if log_path else None  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None, **child_options())
    where = f" (log: {log_path})" if log_path else ""
    try:
        raise_swallowed_interrupt()  # a Ctrl-C or SIGTERM that came while Popen forked
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{' '.join(cmd[:4])} {ended(proc.returncode)} before it was ready{where}")
            with contextlib.suppress(httpx.TransportError):  # no proxy: see LOCAL
                if httpx.get(ready_url, timeout=2, **LOCAL).status_code == 200:
                    break
                if never_ready is not None and (why := never_ready()) is not None:
                    raise RuntimeError(f"{' '.join(cmd[:4])} will never be ready: {why}{where}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(cmd[:4])} was not ready after {timeout_s:.0f} s{where}")
            time.sleep(0.3)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if out is not None:
            out.close()


def ended(returncode: int) -> str:
    """How a child process ended, in words: ``exited with N``, or the signal that killed it (``Popen``'s
    negative status, which read as "exited with -9"), SIGKILL with its usual sender named."""
    if returncode >= 0:
        return f"exited with {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    oom = " (out of memory? the kernel's OOM killer sends it)" if -returncode == signal.SIGKILL else ""
    return f"was killed by {name}{oom}"


def child_options() -> dict[str, Any]:
    """``Popen`` keywords for a process that must not outlive this one: on Linux the kernel sends it
    SIGTERM when this process dies, however it dies (a SIGKILL runs no ``finally``, and a gateway left
    behind serves on, its ports held). The gateway's own workers use the same mechanism
    (``serving.workers``). The signal comes when the *thread* that started the child ends: start
    children from a thread that lives as long as they should (the main thread, in the demo and bench)."""
    arm: Callable[[], None] | None = _stop_with_parent(os.getpid())
    return {"preexec_fn": arm} if arm is not None else {}


def end_with_parent() -> None:
    """For a process pool's ``initializer``: the pool's process ends when the process that made the pool
    ends, however it ends. A ``ProcessPoolExecutor``'s process holds both ends of its call queue's pipe,
    so a pool whose maker was killed (SIGKILL, the OOM killer) left it waiting for its next call for
    ever, with the pool's resource tracker, after the call it ran had finished."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_after, args=(parent,), name="parent-watch", daemon=True).start()


def _exit_after(parent: Any) -> None:
    """Wait for ``parent``'s end (its sentinel: a pipe only that process writes to), then end at once."""
    parent.join()
    os._exit(1)


def stop_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt in the main thread, as Ctrl-C does, so that ``running``'s
    ``finally`` (and any other context manager) stops the servers a command started: Python's default
    for SIGTERM ends the process at once, leaving them running, ports held."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    _keep_swallowed_interrupts()


# A KeyboardInterrupt (Ctrl-C, or SIGTERM under stop_on_sigterm) that Python could not raise: a signal that
# arrives while Popen forks a child with a ``preexec_fn`` (child_options) is handled inside the at-fork
# hooks (logging's lock release), where an exception is printed as "Exception ignored" and dropped, and
# the command went on as if never stopped (a bench measured on past its SIGTERM, its servers killed).
_SWALLOWED = threading.Event()


def _keep_swallowed_interrupts() -> None:
    """Record, rather than only print, a KeyboardInterrupt Python had to drop (``sys.unraisablehook``),
    for :func:`raise_swallowed_interrupt` to raise where it can propagate."""
    if getattr(sys.unraisablehook, "_kiln_keeps_interrupts", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            _SWALLOWED.set()
            return
        previous(unraisable)

    hook._kiln_keeps_interrupts = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def run_child(cmd: list[str]) -> int:
    """Run ``cmd`` to its end, its output on this process's, and return its exit status: ``subprocess.run(cmd,
    **child_options()).returncode``, but a Ctrl-C or SIGTERM that came while it was forked
    (:func:`raise_swallowed_interrupt`) kills it at once, as one that comes while it runs does (the stage,
    minutes of training or an export, ran to its end, and the command went on past its stop)."""
    with subprocess.Popen(cmd, **child_options()) as proc:
        try:
            raise_swallowed_interrupt()
            return proc.wait()
        except BaseException:  # as subprocess.run: the child killed, then reaped by the with
            proc.kill()
            raise


def raise_swallowed_interrupt() -> None:
    """Raise the KeyboardInterrupt that came while a child was being started and was dropped (see
    :data:`_SWALLOWED`); nothing otherwise. Call it right after ``Popen(..., **child_options())``, where
    the child is already the caller's to stop."""
    if _SWALLOWED.is_set():
        _SWALLOWED.clear()
        raise KeyboardInterrupt
