"""How many CPUs this process may really use: its affinity, capped by a cgroup CPU quota.

A container limited to 2 CPUs by a quota (Kubernetes ``resources.limits.cpu``) still sees every core
of the node in its affinity mask; sizing a thread pool by that mask oversubscribes the quota and gets
throttled. Like Go's automaxprocs, the quota is rounded down (at least 1).
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """CPUs in this process's affinity mask, capped by the cgroup (v2 or v1) CPU quota where one is set."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(cgroup)
    return max(1, min(count, int(quota))) if quota is not None else count


def cgroup_cpu_quota(cgroup: Path = CGROUP) -> float | None:
    """The CPU quota in CPUs (quota / period), or None where no quota applies or none is readable."""
    try:
        v2 = cgroup / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = cgroup / "cpu"
        if (v1 / "cpu.cfs_quota_us").is_file():
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
            return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None
    return None
