"""What Kiln's advisory file locks share (``export.writer_lock``: one export a repository at a time;
``training.run_lock``: one training run an output directory and name): whether a lock file is still
the one held, and who holds it, as its holder wrote it for a waiting or refused process to name."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path


def still_named(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (its holder removes it as it lets go, so a
    lock taken on a file no longer there holds nothing: the next taker makes a new one)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it ("pid 123 on host since ..."), or a plain word."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "another process"


def note_holder(fd: int) -> None:
    """Write this process as the lock's holder ("pid 123 on host since ..."); OSError where it cannot
    (a full disk, a quota): only a courtesy to the others, the lock is held all the same."""
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
