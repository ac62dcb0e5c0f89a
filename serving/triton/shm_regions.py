"""The python backend's shared-memory regions in /dev/shm, and its directory in /tmp, that a stopped Triton
left, and their sweep.

:class:`serving.triton.server.TritonServer` sweeps them when it stops; procfs says which regions a
live process still maps (another server's), and those stay.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from serving.execution.occupancy import disk_space

# The python backend's shared-memory regions (a 1 MiB file for each model instance, its stub's, which
# grows under load: the flavour of four translators and nine ONNX entries starts with 13 MiB of a
# container's 64 MiB /dev/shm), which it unlinks when it shuts down cleanly; a server that died, was
# killed, or exited before it was ready leaves them behind. Every run of the suite left one (its
# port-race test), as did every crash of Triton 2.51 under streaming in the bench.
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"


# The python backend's own directory, ``/tmp/python_env_XXXXXX`` (its library names /tmp, whatever TMPDIR
# says), which it removes when it shuts down. tritonserver handles SIGTERM and SIGINT only once its models
# are loaded: one stopped before (a Ctrl-C of a start) dies by the signal and left one, empty, for good.
ENV_DIR = Path("/tmp")
ENV_PREFIX = "python_env_"


def sweep_python_envs(since: float, directory: Path = ENV_DIR) -> list[str]:
    """Remove the python backend's empty directories in ``directory`` made since ``since`` (wall time),
    and name them: what a server stopped while it loaded left. One that a running tritonserver started
    before it was made may be that server's own (empty until a model's ``EXECUTION_ENV_PATH`` is
    unpacked there; made when its first python model loads, seconds or hours after its start) and
    stays: a server whose directory is gone dies by SIGABRT when it stops. One that holds anything, or
    is older, stays too."""
    try:
        found = {path: path.stat().st_mtime for path in directory.glob(f"{ENV_PREFIX}*") if path.is_dir()}
    except OSError:
        return []
    candidates = {path: made for path, made in found.items() if made >= since}
    starts = tritonserver_starts() if candidates else []
    if starts is None:
        return []
    removed = []
    for path, made in candidates.items():
        if any(start <= made + 1 for start in starts):  # a second's slack: coarse file times
            continue
        with contextlib.suppress(OSError):  # not empty, or gone meanwhile
            path.rmdir()
            removed.append(path.name)
    return removed


def tritonserver_starts() -> list[float] | None:
    """When each running ``tritonserver`` process (a zombie aside) that this one may read started
    (wall time, procfs; up to a second early), or None where that cannot be told."""
    try:
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, StopIteration, ValueError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    starts = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            data = stat.read_bytes()
        except OSError:  # gone meanwhile
            continue
        name, _, rest = data.partition(b"(")[2].rpartition(b")")
        fields = rest.split()  # state first, start time (ticks after boot) 20th
        if name == b"tritonserver" and len(fields) > 19 and fields[0] not in (b"Z", b"X"):
            starts.append(boot + int(fields[19]) / ticks)
    return starts


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


# What the python backend logs where /dev/shm has no room for a model instance's region (at load) or for
# a region to grow (under load)
SHORTAGE_SIGNS = ("Unable to initialize shared memory key", "Failed to increase the shared memory pool size")


def shortage_note(log_text: str, directory: Path = SHM_DIR) -> str:
    """One line saying that ``directory`` was too small for the python backend, where ``log_text`` (the
    server's log) says so, else "": Triton's own words are in a model's row of its status table, tens of
    lines above the ``failed to load all models`` a user reads last."""
    if not any(sign in log_text for sign in SHORTAGE_SIGNS):
        return ""
    space = disk_space(str(directory))
    room = "" if space is None else f" ({space[1] >> 20} MiB in all)"  # free after the regions' sweep
    return (
        f"{directory}{room} has no room for Triton's python backend, which needs at least 1 MiB there for "
        "each model instance and more for large batches: run the container with a larger --shm-size "
        "(Kubernetes: a memory-backed emptyDir on /dev/shm, docs/deploy.md)"
    )
