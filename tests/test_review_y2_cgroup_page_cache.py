"""A cgroup's usage counts the page cache of files it read (the dataset's own images, a run before):
the kernel reclaims it before any OOM kill, so it is headroom, not a reason to refuse a folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data.memory import available_memory

GIB = 2**30
V2_LIMITS = {"job/memory.max": f"{16 * GIB}\n", "job/memory.current": f"{15 * GIB}\n"}
V1_LIMITS = {
    "memory/job/memory.limit_in_bytes": f"{16 * GIB}\n",
    "memory/job/memory.usage_in_bytes": f"{15 * GIB}\n",
}


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize(
    ("membership", "files", "expected"),
    [
        pytest.param(  # 14 GiB of the usage the dataset's files, cached, 12 of them reclaimable
            "0::/job",
            {**V2_LIMITS, "job/memory.stat": f"anon {GIB}\nfile {14 * GIB}\ninactive_file {12 * GIB}\n"},
            13 * GIB,
            id="v2-page-cache-is-headroom",
        ),
        pytest.param(
            "4:memory:/job",
            {
                **V1_LIMITS,
                "memory/job/memory.stat": f"cache {14 * GIB}\nrss {GIB}\ntotal_inactive_file {12 * GIB}\n",
            },
            13 * GIB,
            id="v1-page-cache-is-headroom",
        ),
        pytest.param("0::/job", V2_LIMITS, GIB, id="no-memory-stat-leaves-the-usage"),
    ],
)
def test_a_cgroups_headroom_counts_its_reclaimable_page_cache(tmp_path, membership, files, expected):
    proc = _write(
        tmp_path / "proc", {"meminfo": f"MemAvailable: {64 * GIB // 1024} kB\n", "cgroup": f"{membership}\n"}
    )
    cgroup = _write(tmp_path / "cgroup", files)
    assert available_memory(cgroup, proc / "cgroup", proc / "meminfo") == expected
