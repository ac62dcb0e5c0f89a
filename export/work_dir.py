"""The export's working directory in TMPDIR (graphs, quantized copies), and the sweep of those that
killed exports left.

``tempfile.TemporaryDirectory`` removes its directory on an exception or Ctrl-C, but an export killed
outright (the OOM killer, ``kill -9``, a CI job's hard timeout) leaves it, with every graph in it: one
per precision, hundreds of MB for a large model, again at each kill. Each directory is named after the
host and process that made it (``kiln-export-<host>-<pid>-<hex>``), as the repository's staging
directories are, so the next export removes those whose process has ended (``repository._owner_gone``).
"""

from __future__ import annotations

import contextlib
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
        if _ours(path) and _owner_gone(path, suffix if owned else ""):
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
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
