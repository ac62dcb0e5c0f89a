"""How many CPUs this process may really use: its affinity, capped by a cgroup CPU quota.

A container limited to 2 CPUs by a quota (Kubernetes ``resources.limits.cpu``) still sees every core
of the node in its affinity mask; sizing a thread pool by that mask oversubscribes the quota and gets
throttled. Like Go's automaxprocs, the quota is rounded down (at least 1).

The quota is read where this process's cgroup is (``/proc/self/cgroup``) and on each cgroup above it,
the tightest one applying: a container with its own cgroup namespace sees its cgroup at the mount's
root, but a systemd service (``CPUQuota=``) or a container sharing the host's namespace sits deeper,
under a root cgroup that has no quota file.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def usable_cpus(cgroup: Path = CGROUP, proc_cgroup: Path = PROC_CGROUP) -> int:
    """CPUs in this process's affinity mask, capped by the cgroup (v2 or v1) CPU quota where one is set."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(cgroup, proc_cgroup)
    return max(1, min(count, int(quota))) if quota is not None else count


def cgroup_cpu_quota(cgroup: Path = CGROUP, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The tightest CPU quota in CPUs (quota / period) of this process's cgroup and those above it, or
    None where no quota applies or none is readable."""
    try:
        if (cgroup / "cgroup.controllers").is_file() or (cgroup / "cpu.max").is_file():  # v2
            quotas = [
                _v2_quota(d / "cpu.max") for d in _own_and_above(cgroup, _cgroup_path(proc_cgroup, None))
            ]
        else:
            v1 = cgroup / "cpu"
            quotas = [_v1_quota(d) for d in _own_and_above(v1, _cgroup_path(proc_cgroup, "cpu"))]
    except (OSError, ValueError, ZeroDivisionError):
        return None
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def _cgroup_path(proc_cgroup: Path, controller: str | None) -> str:
    """This process's cgroup path in the v2 hierarchy (``controller`` None) or the v1 hierarchy holding
    ``controller``; "/" where ``/proc/self/cgroup`` is unreadable or names none."""
    try:
        lines = proc_cgroup.read_text(
            encoding="utf-8", errors="surrogateescape"
        ).splitlines()  # a cgroup name is bytes
    except OSError:
        return "/"
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if (controller is None and parts[0] == "0" and not parts[1]) or controller in parts[1].split(","):
            return parts[2] or "/"
    return "/"


def _own_and_above(mount: Path, path: str) -> list[Path]:
    """The directory of cgroup ``path`` under ``mount`` and each one above it up to ``mount``; ``mount``
    alone where that directory is not there (a namespaced or bind-mounted cgroup is the mount's root)."""
    own = mount.joinpath(*[part for part in path.split("/") if part not in ("", ".", "..")])
    if own == mount or not own.is_dir():
        return [mount]
    return [own, *[d for d in own.parents if d == mount or mount in d.parents]]


def _v2_quota(cpu_max: Path) -> float | None:
    if not cpu_max.is_file():
        return None
    quota, period = cpu_max.read_text(encoding="utf-8").split()[:2]
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(directory: Path) -> float | None:
    if not (directory / "cpu.cfs_quota_us").is_file():
        return None
    quota_us = int((directory / "cpu.cfs_quota_us").read_text(encoding="utf-8"))
    period_us = int((directory / "cpu.cfs_period_us").read_text(encoding="utf-8"))
    return None if quota_us <= 0 else quota_us / period_us
