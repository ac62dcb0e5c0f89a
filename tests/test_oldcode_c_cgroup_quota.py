"""The CPU quota is read where this process's cgroup is, and the tightest one above it applies: a systemd
service with ``CPUQuota=200%`` (cgroup v2, no namespace of its own) sits under a root cgroup with no
``cpu.max``, and the gateway sized its lone-request threads by every core of the host."""

from __future__ import annotations

import os

import pytest

from serving.execution.cpus import cgroup_cpu_quota, usable_cpus


def _tree(root, files):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


V2_HOST = {"cgroup.controllers": "cpuset cpu io memory pids\n"}  # a v2 root: no cpu.max of its own


@pytest.mark.parametrize(
    ("own", "files", "quota"),
    [
        ("0::/system.slice/kiln.service\n", {"system.slice/kiln.service/cpu.max": "200000 100000\n"}, 2.0),
        (  # the parent's quota is tighter than the service's own
            "0::/system.slice/kiln.service\n",
            {"system.slice/cpu.max": "50000 100000\n", "system.slice/kiln.service/cpu.max": "max 100000\n"},
            0.5,
        ),
        ("0::/user.slice\n", {"user.slice/cpu.max": "max 100000\n"}, None),
        # a namespaced container sees "/" and its own quota at the mount's root
        ("0::/\n", {"cpu.max": "150000 100000\n"}, 1.5),
        # the path names a cgroup this mount does not show (bind-mounted container root): the root counts
        ("0::/docker/abc\n", {"cpu.max": "300000 100000\n"}, 3.0),
    ],
    ids=["v2-service", "v2-parent-tighter", "v2-unlimited", "v2-namespaced", "v2-bind-mounted"],
)
def test_a_cgroup_v2_quota_is_read_at_the_process_cgroup_and_the_tightest_above_it(
    tmp_path, own, files, quota
):
    mount = _tree(tmp_path / "cgroup", {**V2_HOST, **files})
    proc = tmp_path / "proc_cgroup"
    proc.write_text(own)
    assert cgroup_cpu_quota(mount, proc) == quota
    cores = len(os.sched_getaffinity(0))
    assert usable_cpus(mount, proc) == (cores if quota is None else max(1, min(cores, int(quota))))


def test_a_cgroup_v1_cpu_quota_of_a_nested_cgroup_caps_the_usable_cpus(tmp_path):
    mount = _tree(
        tmp_path / "cgroup",
        {
            "cpu/cpu.cfs_quota_us": "-1\n",
            "cpu/cpu.cfs_period_us": "100000\n",
            "cpu/slurm/job_7/cpu.cfs_quota_us": "100000\n",
            "cpu/slurm/job_7/cpu.cfs_period_us": "100000\n",
        },
    )
    proc = tmp_path / "proc_cgroup"
    proc.write_text("5:memory:/slurm/job_7\n4:cpu,cpuacct:/slurm/job_7\n0::/\n")
    assert cgroup_cpu_quota(mount, proc) == 1.0
    assert usable_cpus(mount, proc) == 1


def test_an_unreadable_proc_cgroup_falls_back_to_the_mounts_root(tmp_path):
    mount = _tree(tmp_path / "cgroup", {"cpu.max": "100000 100000\n"})
    assert cgroup_cpu_quota(mount, tmp_path / "missing") == 1.0
