"""The GPU gateway's ceiling: ONNX Runtime's CUDA provider called directly on the batches the gateway ran.

The same bucket shapes in the same proportions, numpy in and out, from as many threads as the gateway
had processes (issue 11: the gateway on the GPU ≥ 0.5x of that; :mod:`bench.gpu_serving`).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.stats import ratio

# A thread's sessions and feeds: bucket size -> its session, bucket size -> that session's inputs.
Worker = tuple[dict[int, Any], dict[int, dict[str, np.ndarray]]]


def direct_on_mix(
    model_file: Path, mix: dict[str, Any], parallel: int = 1, budget_s: float = 2.0
) -> dict[str, Any]:
    """ONNX Runtime's CUDA provider called directly on ``mix``'s batches, as the gateway runs them: one
    session per bucket shape, numpy in and out, from ``parallel`` threads with sessions of their own (a
    gateway process each). Each thread runs the bucket shapes in the mix's proportions for ``budget_s``;
    images/s counts the mix's real rows (its items per padded row)."""
    from bench.gpu import onnxruntime

    ort = onnxruntime()
    sizes = sorted(mix["batches"])
    padded_rows = sum(b * n for b, n in mix["batches"].items())
    fill = mix["items"] / padded_rows if padded_rows else 0.0
    order = _call_order(mix["batches"])
    workers = [_warm_worker(ort, model_file, sizes) for _ in range(parallel)]
    rows, elapsed = _run_for(workers, order, budget_s)
    return {"parallel": parallel, "fill": round(fill, 3), "throughput_ips": fill * sum(rows) / elapsed}


def _call_order(batches: dict[int, float]) -> list[int]:
    """The bucket sizes in the mix's proportions (64 calls' worth, each size at least once), shuffled."""
    total = sum(batches.values())
    order = [b for b in sorted(batches) for _ in range(max(1, round(64 * batches[b] / total)))]
    np.random.default_rng(0).shuffle(order)
    return order


def _feeds_for(session: Any, size: int) -> dict[str, np.ndarray]:
    """``session``'s inputs at batch ``size``: random pixels for the first, zeros for the rest."""
    from serving.execution.placement import zero_inputs

    feeds = zero_inputs(session, size)
    name = next(iter(feeds))
    feeds[name] = np.random.default_rng(size).integers(0, 256, feeds[name].shape).astype(feeds[name].dtype)
    return feeds


def _warm_worker(ort: Any, model_file: Path, sizes: list[int]) -> Worker:
    """One thread's sessions (one per bucket size, CUDA first) and feeds, each shape planned before the
    clock starts."""
    from bench.gpu import CUDA_OPTIONS

    providers = [("CUDAExecutionProvider", CUDA_OPTIONS), "CPUExecutionProvider"]
    sessions = {b: ort.InferenceSession(str(model_file), providers=providers) for b in sizes}
    feeds = {b: _feeds_for(sessions[b], b) for b in sizes}
    for b in sizes:
        for _ in range(3):
            sessions[b].run(None, feeds[b])
    return sessions, feeds


def _run_for(workers: list[Worker], order: list[int], budget_s: float) -> tuple[list[int], float]:
    """Each worker on a thread of its own, started together, calling its sessions in ``order`` (each
    from its own place in it) for ``budget_s``; the padded rows each ran, and the seconds it took."""
    rows = [0] * len(workers)
    stop_at = [0.0]
    barrier = threading.Barrier(len(workers) + 1)

    def work(i: int) -> None:
        sessions, feeds = workers[i]
        barrier.wait()
        k = i
        while time.perf_counter() < stop_at[0]:
            b = order[k % len(order)]
            sessions[b].run(None, feeds[b])  # ONNX Runtime releases the GIL while it runs
            rows[i] += b
            k += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    start = time.perf_counter()
    stop_at[0] = start + budget_s
    barrier.wait()
    for t in threads:
        t.join()
    return rows, time.perf_counter() - start


def add_direct(rows: list[dict[str, Any]], model_file: Path, errors: dict[str, str]) -> None:
    """ONNX Runtime CUDA directly on each concurrent GPU row's batches, with as many threads as the
    gateway had processes, and the gateway's share of it."""
    for row in rows:
        if row["device"] != "gpu" or row["concurrency"] == 1 or not row["mix"]["batches"]:
            continue
        try:
            direct = direct_on_mix(model_file, row["mix"], parallel=row["workers"])
        except Exception as exc:  # noqa: BLE001 - reported with the results
            errors[f"direct, {row['workers']} threads, c={row['concurrency']}"] = str(exc)
            continue
        row["direct_on_mix_ips"] = direct["throughput_ips"]
        row["gateway_over_direct"] = ratio(row["throughput_rps"], direct["throughput_ips"])
