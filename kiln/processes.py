"""Run a server as a subprocess until it answers ready, and always stop it (demo and benchmark)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def running(
    cmd: list[str], ready_url: str, *, timeout_s: float = 120.0, log_path: Path | None = None
) -> Iterator[subprocess.Popen]:
    """Start ``cmd``, poll ``ready_url`` until it answers 200, yield the process, terminate it on exit.

    Output goes to ``log_path`` when given (else to this process's streams); a process that exits or
    is not ready in time raises RuntimeError naming the command and where its log is.
    """
    import httpx

    out = open(log_path, "w") if log_path else None  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None)
    where = f" (log: {log_path})" if log_path else ""
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{' '.join(cmd[:4])} exited with {proc.returncode} before it was ready{where}"
                )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
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


def stop_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt in the main thread, as Ctrl-C does, so that ``running``'s
    ``finally`` (and any other context manager) stops the servers a command started: Python's default
    for SIGTERM ends the process at once, leaving them running, ports held."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
