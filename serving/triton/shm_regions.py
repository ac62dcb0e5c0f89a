"""The python backend's shared-memory regions in /dev/shm that a stopped Triton left, and their sweep.

:class:`serving.triton.server.TritonServer` sweeps them when it stops; procfs says which regions a
live process still maps (another server's), and those stay.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

# The python backend's shared-memory regions (a 1 MiB file for each model instance, its stub's, which
# grows under load: the flavour of four translators and nine ONNX entries starts with 13 MiB of a
# container's 64 MiB /dev/shm), which it unlinks when it shuts down cleanly; a server that died, was
# killed, or exited before it was ready leaves them behind. Every run of the suite left one (its
# port-race test), as did every crash of Triton 2.51 under streaming in the bench.
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"


def sweep_shm_regions(since: float, directory: Path = SHM_DIR) -> list[str]:
    """Unlink the python backend's shared-memory regions in ``directory`` made since ``since`` (wall
    time) that no process maps, and name them: what a stopped server left. A region a live server
    (another one, started meanwhile) maps is in use and stays; so does anything older."""
    try:
        candidates = [path for path in directory.glob(f"{SHM_PREFIX}*") if path.stat().st_mtime >= since]
    except OSError:
        return []
    if not candidates:
        return []
    mapped = mapped_files(str(directory))
    removed = []
    for path in candidates:
        if str(path) not in mapped:
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path.name)
    return removed


def mapped_files(prefix: str) -> set[str]:
    """The files under ``prefix`` that any process this one may read (procfs) has mapped. The maps are
    read as bytes and their paths decoded as Python names files (``os.fsdecode``): a path may be in any
    bytes (not ASCII under a C locale, not always UTF-8), which failed the sweep as text."""
    found: set[str] = set()
    start = os.fsencode(prefix)
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            data = maps.read_bytes()
        except OSError:  # gone meanwhile, or another user's
            continue
        for line in data.split(b"\n"):  # a name's \n is written \012, its \r as it is
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith(start):
                found.add(os.fsdecode(fields[5].strip()))
    return found
