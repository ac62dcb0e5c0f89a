"""How much memory this process may still take: the kernel's MemAvailable, capped by the headroom
under its cgroup's memory limit (a container's), which the OOM killer enforces without a message.

Read so a dataset decoded into memory is refused in one line before decoding, not killed minutes in.
The cgroup is found as ``serving/execution/cpus.py`` finds it: ``/proc/self/cgroup``, then that cgroup
and each one above it (the tightest limit applies), or the mount's root in a namespaced container.
"""

from __future__ import annotations

from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
MEMINFO = Path("/proc/meminfo")
# (limit file, usage file, memory.stat key of the reclaimable page cache) of cgroup v2, then v1 (its
# memory controller mounted at memory/). The usage counts the page cache of files read (the dataset's
# own, a run before): the kernel drops it before an OOM kill, so it is headroom (as kubelet's working set).
LIMIT_FILES = (
    ("", "memory.max", "memory.current", "inactive_file"),
    ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
)


def available_memory(
    cgroup: Path = CGROUP, proc_cgroup: Path = PROC_CGROUP, meminfo: Path = MEMINFO
) -> int | None:
    """Bytes this process may still allocate, or None where nothing says (not Linux)."""
    candidates = [
        m for m in (_mem_available(meminfo), _cgroup_headroom(cgroup, proc_cgroup)) if m is not None
    ]
    return min(candidates) if candidates else None


def _mem_available(meminfo: Path) -> int | None:
    try:
        for line in meminfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_headroom(cgroup: Path, proc_cgroup: Path) -> int | None:
    """The smallest ``limit - usage`` over this process's cgroup and those above it; None where no limit."""
    try:
        lines = proc_cgroup.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError:
        lines = []
    paths = {}
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths["" if parts[0] == "0" and not parts[1] else parts[1]] = parts[2]
    headrooms = []
    for sub, limit_name, usage_name, cache_key in LIMIT_FILES:
        key = "" if not sub else next((k for k in paths if sub in k.split(",")), sub)
        mount = cgroup / sub if sub else cgroup
        for directory in _own_and_above(mount, paths.get(key, "/")):
            try:
                limit = (directory / limit_name).read_text(encoding="utf-8").strip()
                usage = int((directory / usage_name).read_text(encoding="utf-8").strip())
            except (OSError, ValueError):
                continue
            usage -= min(usage, _stat(directory / "memory.stat", cache_key))
            if limit.isdigit() and int(limit) < 1 << 60:  # v1 "no limit" is a huge number, v2 "max"
                headrooms.append(max(0, int(limit) - usage))
    return min(headrooms) if headrooms else None


def _stat(path: Path, key: str) -> int:
    """``key``'s value in a cgroup's memory.stat (0 where unreadable)."""
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _own_and_above(mount: Path, path: str) -> list[Path]:
    own = mount.joinpath(*[part for part in path.split("/") if part not in ("", ".", "..")])
    if own == mount or not own.is_dir():
        return [mount]
    return [own, *[d for d in own.parents if d == mount or mount in d.parents]]


def gib(n: float) -> str:
    """Bytes in GiB or MiB with one decimal (KiB below 1 MiB): the units a memory limit is set in."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 2**10:.0f} KiB"
