"""What the benchmark ran on: CPU, cores, memory, accelerator and library versions, and how fast the
machine was while it ran (:func:`speed_probe`, :func:`steal_share`)."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

# A float32 product of the decoder's size class (rows x inner x columns) and a copy larger than a
# server core's share of the last-level cache: one thread's compute and one thread's memory traffic.
PROBE_PRODUCT = (128, 512, 512)
PROBE_COPY_MIB = 64

LIBRARIES = (
    "torch",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "ctranslate2",
    "numpy",
    "fastapi",
    "uvicorn",
    "tritonclient",
    "nvidia-pytriton",
    "grpcio",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return float("nan")


def cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return [f for f in wanted if f in flags]


def cpu_caches(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> dict[str, str]:
    """The data and unified caches CPU 0 sees, by level (``{"L1d": "48 KiB", "L2": "2 MiB", "L3": "105
    MiB"}``; {} where sysfs does not say). The benchmark's ratios move with them: a decoder's weights
    and caches that fit one core's L2 on one VM spill to a slower L3 on the next."""
    caches = {}
    try:
        for index in sorted(root.glob("index*")):
            kind = (index / "type").read_text().strip()
            if kind == "Instruction":
                continue
            name = f"L{(index / 'level').read_text().strip()}" + ("d" if kind == "Data" else "")
            caches[name] = _size((index / "size").read_text().strip())
    except OSError:
        return {}
    return caches


def _size(text: str) -> str:
    """sysfs's cache size (``48K``, ``107520K``, ``2M``) in binary units."""
    units = {"K": 1, "M": 2**10, "G": 2**20}
    if not text or text[-1] not in units or not text[:-1].isdigit():
        return text
    kib = int(text[:-1]) * units[text[-1]]
    return f"{kib // 2**10} MiB" if kib >= 2**10 and kib % 2**10 == 0 else f"{kib} KiB"


def describe_cpu(machine: dict[str, Any]) -> str:
    """The CPU as the report's machine line gives it: model, the vector extensions that change which
    kernels run, and the caches."""
    details = list(machine.get("cpu_flags") or [])
    details += [f"{level} {size}" for level, size in (machine.get("caches") or {}).items()]
    return machine["cpu"] + (f" ({', '.join(details)})" if details else "")


def versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return found


def machine_info() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "caches": cpu_caches(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": memory_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": _gpu(),
        "libraries": versions(),
    }


def _gpu() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - an info probe must never break the benchmark
        return None


def speed_probe(budget_s: float = 0.3) -> dict[str, float]:
    """How fast one thread of this machine is right now: a float32 matrix product (``product_gflops``)
    and a 64 MiB memory copy (``copy_gbps``, bytes read plus written), each the best of its repeats
    within half of ``budget_s``. A VM's speed drifts: the same code measured ~40 % apart on two days
    (the memory side more than the arithmetic), so the report prints this at the start and the end of
    a run and ratios are read against the machine each run had."""
    import numpy as np

    rows, inner, columns = PROBE_PRODUCT
    rng = np.random.default_rng(0)
    a = rng.random((rows, inner), dtype=np.float32)
    b = rng.random((inner, columns), dtype=np.float32)
    source = np.ones(PROBE_COPY_MIB * 2**20 // 8)
    target = np.empty_like(source)
    with _one_blas_thread():
        product = _best_seconds(lambda: a @ b, budget_s / 2)
    copy = _best_seconds(lambda: np.copyto(target, source), budget_s / 2)
    return {
        "product_gflops": round(2 * rows * inner * columns / product / 1e9, 1),
        "copy_gbps": round(2 * source.nbytes / copy / 1e9, 1),
    }


def _best_seconds(run: Any, budget_s: float) -> float:
    """The fastest of ``run()``'s calls (after one warm-up) within ``budget_s``, at least three."""
    run()
    best, calls, stop = math.inf, 0, time.perf_counter() + budget_s
    while calls < 3 or time.perf_counter() < stop:
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
        calls += 1
    return best


@contextlib.contextmanager
def _one_blas_thread() -> Any:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # the product then runs on numpy's BLAS threads; still comparable run to run
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def cpu_ticks() -> list[int] | None:
    """The machine's CPU time counters (``/proc/stat``: user, nice, system, idle, iowait, irq, softirq,
    steal, ...), or None where there are none."""
    try:
        line = Path("/proc/stat").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    fields = line.split()
    return [int(v) for v in fields[1:]] if fields and fields[0] == "cpu" else None


def steal_share(before: list[int] | None, after: list[int] | None) -> float | None:
    """The percentage of the machine's CPU time between two :func:`cpu_ticks` readings that the host
    gave to other guests (``steal``): time this VM's cores were ready and not running; None without
    counters."""
    if not before or not after or len(before) < 8 or len(after) < 8:
        return None
    spent = [b - a for a, b in zip(before, after, strict=False)]
    total = sum(spent[:8])  # guest time is counted in user and nice already
    return round(100 * spent[7] / total, 2) if total > 0 else None


def speed_line(machine: dict[str, Any]) -> str:
    """The report's line on the machine's speed during the run ('' where the run did not probe it)."""
    speed = machine.get("speed") or {}
    start, end = speed.get("start"), speed.get("end")
    if not start:
        return ""

    def span(key: str) -> str:
        return f"{start[key]:g}" + (f" → {end[key]:g}" if end else "")

    line = (
        f"Machine speed on one thread, at the start{' → the end' if end else ''} of the run: float32 "
        f"product {span('product_gflops')} GFLOP/s, {PROBE_COPY_MIB} MiB copy {span('copy_gbps')} GB/s"
    )
    steal = machine.get("steal_pct")
    if steal is not None:
        line += f"; CPU time taken by the host for other guests during the run: {steal:g} %"
    return line + ".\n"
