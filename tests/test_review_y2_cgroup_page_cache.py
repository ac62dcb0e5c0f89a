"""A cgroup's usage counts the page cache of files it read (the dataset's own images, a run before):
the kernel reclaims it before any OOM kill, so it is headroom, not a reason to refuse a folder."""

from __future__ import annotations

from pathlib import Path

from training.data.memory import available_memory

GIB = 2**30


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


def test_reclaimable_page_cache_in_a_cgroup_v2_is_headroom(tmp_path):
    meminfo = _write(tmp_path / "proc", {"meminfo": f"MemAvailable: {64 * GIB // 1024} kB\n"})
    cgroup = _write(
        tmp_path / "v2",
        {
            "job/memory.max": f"{16 * GIB}\n",
            "job/memory.current": f"{15 * GIB}\n",  # 14 GiB of it the dataset's files, cached
            "job/memory.stat": f"anon {GIB}\nfile {14 * GIB}\ninactive_file {12 * GIB}\nactive_file {2 * GIB}\n",
        },
    )
    _write(tmp_path / "proc", {"cgroup": "0::/job\n"})
    assert available_memory(cgroup, tmp_path / "proc" / "cgroup", meminfo / "meminfo") == 13 * GIB


def test_reclaimable_page_cache_in_a_cgroup_v1_is_headroom(tmp_path):
    meminfo = _write(tmp_path / "proc", {"meminfo": f"MemAvailable: {64 * GIB // 1024} kB\n"})
    cgroup = _write(
        tmp_path / "v1",
        {
            "memory/job/memory.limit_in_bytes": f"{16 * GIB}\n",
            "memory/job/memory.usage_in_bytes": f"{15 * GIB}\n",
            "memory/job/memory.stat": f"cache {14 * GIB}\nrss {GIB}\ntotal_inactive_file {12 * GIB}\n",
        },
    )
    _write(tmp_path / "proc", {"cgroup": "4:memory:/job\n"})
    assert available_memory(cgroup, tmp_path / "proc" / "cgroup", meminfo / "meminfo") == 13 * GIB


def test_no_memory_stat_leaves_the_usage_as_it_is(tmp_path):
    meminfo = _write(tmp_path / "proc", {"meminfo": f"MemAvailable: {64 * GIB // 1024} kB\n"})
    cgroup = _write(
        tmp_path / "v2", {"job/memory.max": f"{16 * GIB}\n", "job/memory.current": f"{15 * GIB}\n"}
    )
    _write(tmp_path / "proc", {"cgroup": "0::/job\n"})
    assert available_memory(cgroup, tmp_path / "proc" / "cgroup", meminfo / "meminfo") == GIB
