"""The export's working directory in TMPDIR (graphs, quantized copies), and the sweep of those that
killed exports left.

``tempfile.TemporaryDirectory`` removes its directory on an exception or Ctrl-C, but an export killed
outright (the OOM killer, ``kill -9``, a CI job's hard timeout) leaves it, with every graph in it: one
per precision, hundreds of MB for a large model, again at each kill. Each directory is named after the
host and process that made it (``kiln-export-<host>-<pid>-<hex>``), as the repository's staging
directories are, so the next export removes those whose process has ended (``repository._owner_gone``).
The export also holds a lock on its directory while it runs, which the kernel lets go when the process
dies: a process of the same name in another PID namespace (a container sharing /tmp and the host's
name, ``--network host``) is not one this process can see, and its live directory was removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from export.repository import _HOST, _owner_gone

log = logging.getLogger(__name__)

PREFIX = "kiln-export-"


def sweep_work_dirs(root: Path | None = None) -> list[Path]:
    """Remove the working directories in ``root`` (TMPDIR) of exports that have ended; returns them.
    Directories named before they carried their owner (``kiln-export-<random>``) go once a day old."""
    root = Path(root or tempfile.gettempdir())
    swept = []
    for path in sorted(root.glob(f"{PREFIX}*")):
        suffix = path.name[len(PREFIX) :]
        owned = re.fullmatch(r"\w+-\d+-[0-9a-f]+", suffix) is not None
        if _ours(path) and _owner_gone(path, suffix if owned else "") and not _in_use(path):
            shutil.rmtree(path, ignore_errors=True)
            log.warning("removed %s, left in %s by a killed export", path.name, root)
            swept.append(path)
    return swept


def _ours(path: Path) -> bool:
    """A directory of this user's (another user's, in a shared TMPDIR, cannot be removed by it)."""
    try:
        return path.is_dir() and not path.is_symlink() and path.stat().st_uid == os.getuid()
    except OSError:
        return False


def _lock(path: Path, wait: bool = False) -> int | None:
    """A descriptor of directory ``path`` holding its exclusive lock, None where another holds it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    return fd


def _in_use(path: Path) -> bool:
    """Whether a live export holds ``path``'s lock (``work_directory``), whatever PID namespace it runs in."""
    try:
        fd = _lock(path)
    except OSError:  # gone meanwhile, or not ours to open: not ours to remove either
        return True
    if fd is not None:
        os.close(fd)
    return fd is None


@contextlib.contextmanager
def work_directory() -> Iterator[Path]:
    """A new private working directory in TMPDIR, removed when the block ends, however it ends short of
    the process being killed (then the next export's ``sweep_work_dirs`` removes it)."""
    sweep_work_dirs()
    root = Path(tempfile.gettempdir())
    for _ in range(100):
        path = root / f"{PREFIX}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            path.mkdir(mode=0o700)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"cannot create a working directory in {root}")
    try:  # let go by the kernel however this process ends (sweep_work_dirs); waits out a sweep's test
        held = _lock(path, wait=True)
    except OSError:  # a filesystem without locks: its sweeps then keep every directory (_in_use)
        held = None
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if held is not None:
            os.close(held)
