"""Whether a bucket's CUDA graph replays right on every thread that serves it, read off one run on a GPU.

    python -m bench.gpu_graph_probe REPOSITORY/NAME/1/model.onnx [--device cuda|cpu] [--rows 8]
        [--runs 200] [--output probe.json]

The gateway replays each bucket of a GPU classifier as a CUDA graph through
:class:`serving.execution.bound_session.BoundSession`, whose capture rules (the CUDA provider keeps a
graph per calling thread and captures only after regular runs there) were read from ONNX Runtime's
sources. This runs them on a real device, each bound run's outputs compared bit for bit with a plain
session's on the same random feed:

- ``load_thread`` / ``other_thread``: one bound session of ``--rows`` rows, its first three runs (ms;
  the capture on that thread) and the median of the rest, on the thread that made it and then on
  another, as the load warms a bucket and the batch thread serves it;
- ``plain_p50_ms``: a plain session's median at the same rows (the replay's gain is the difference);
- ``overlapping``: two fresh bound sessions (2x and 4x the rows) whose first runs, their captures,
  start together on two threads while a third thread runs a plain session at random batch sizes, as
  two models' first batches and a third model's traffic can meet: any error, any mismatch.

On the CPU the same code runs without graphs (``graphs: false``), which is how it is tested.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from serving.execution.bound_session import BoundSession
from serving.execution.placement import ONNX_DTYPES, load_cuda_libraries


class Probe:
    """A model's plain session, the options of its graph sessions, and random feeds of its input."""

    def __init__(self, model: Path, device: str) -> None:
        import onnxruntime as ort

        if device == "cuda":
            load_cuda_libraries(ort)
        self.ort, self.model, self.device = ort, model, device
        self.plain = self.session(graphs=False)
        self.inputs = self.plain.get_inputs()
        self.rng = np.random.default_rng(0)
        self.lock = threading.Lock()  # numpy's Generator is not thread-safe

    def session(self, graphs: bool) -> Any:
        if self.device == "cpu":
            providers: list[Any] = ["CPUExecutionProvider"]
        else:
            options = {"enable_cuda_graph": "1"} if graphs else {}
            providers = [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
        return self.ort.InferenceSession(str(self.model), providers=providers)

    def feed(self, rows: int) -> dict[str, np.ndarray]:
        feeds = {}
        with self.lock:
            for meta in self.inputs:
                shape, dtype = [rows, *meta.shape[1:]], np.dtype(ONNX_DTYPES[meta.type])
                if dtype.kind in "biu":
                    feeds[meta.name] = self.rng.integers(0, 256 if dtype.kind == "u" else 128, shape).astype(
                        dtype
                    )
                else:
                    feeds[meta.name] = self.rng.standard_normal(shape).astype(dtype)
        return feeds

    def bound(self, rows: int) -> BoundSession:
        return BoundSession(self.session(graphs=True), rows, self.device)


def checked_runs(
    probe: Probe, bound: BoundSession, rows: int, runs: int, start: threading.Barrier | None = None
) -> dict[str, Any]:
    """``runs`` bound runs on this thread, each against the plain session: first runs, median, mismatches."""
    times, mismatches, error = [], 0, None
    try:
        if start is not None:
            start.wait()
        for _ in range(runs):
            feeds = probe.feed(rows)
            began = time.perf_counter()
            got = bound.run(None, feeds)
            times.append((time.perf_counter() - began) * 1e3)
            expected = probe.plain.run(None, feeds)
            mismatches += not all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    except Exception as exc:  # noqa: BLE001 - what the probe is for: reported, not raised
        error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return {
        "runs": len(times),
        "mismatches": mismatches,
        "error": error,
        "first_ms": [round(t, 3) for t in times[:3]],
        "p50_ms": round(statistics.median(times[3:]), 3) if len(times) > 3 else None,
    }


def _in_thread(fn: Any, *args: Any) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(fn(*args)))
    thread.start()
    return thread, result


def plain_traffic(
    probe: Probe, stop: threading.Event, start: threading.Barrier, max_rows: int
) -> dict[str, Any]:
    """Another model's traffic: a plain session at random batch sizes until ``stop``."""
    other, runs, error = probe.session(graphs=False), 0, None
    start.wait()
    try:
        while not stop.is_set():
            with probe.lock:
                rows = int(probe.rng.integers(1, max_rows + 1))
            other.run(None, probe.feed(rows))
            runs += 1
    except Exception as exc:  # noqa: BLE001 - reported
        error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return {"runs": runs, "error": error}


def run(model: Path, device: str, rows: int, runs: int) -> dict[str, Any]:
    """Every reading of the module's doc, as one dict."""
    probe = Probe(model, device)
    bound = probe.bound(rows)
    out: dict[str, Any] = {"model": str(model), "device": device, "rows": rows, "graphs": bound.graphs}
    out["providers"] = bound.get_providers()
    out["load_thread"] = checked_runs(probe, bound, rows, max(runs // 4, 4))
    thread, result = _in_thread(checked_runs, probe, bound, rows, runs)
    thread.join()
    out["other_thread"] = result
    plain = []
    for _ in range(runs):
        feeds = probe.feed(rows)
        began = time.perf_counter()
        probe.plain.run(None, feeds)
        plain.append((time.perf_counter() - began) * 1e3)
    out["plain_p50_ms"] = round(statistics.median(plain), 3)
    sizes = (2 * rows, 4 * rows)
    fresh = [probe.bound(size) for size in sizes]  # made before the barrier: only their runs overlap
    start, stop = threading.Barrier(3), threading.Event()
    started = [
        _in_thread(checked_runs, probe, b, n, runs // 2, start) for b, n in zip(fresh, sizes, strict=True)
    ]
    noise = _in_thread(plain_traffic, probe, stop, start, 4 * rows)
    for thread, _ in started:
        thread.join()
    stop.set()
    noise[0].join()
    out["overlapping"] = {
        **{f"bound_{n}": result for n, (_, result) in zip(sizes, started, strict=True)},
        "plain_traffic": noise[1],
    }
    return out


def problems(result: dict[str, Any]) -> list[str]:
    """Each error or mismatch the run saw, named: empty when every bound run agreed."""
    found = []
    readings = {
        "load_thread": result["load_thread"],
        "other_thread": result["other_thread"],
        **{f"overlapping {k}": v for k, v in result["overlapping"].items()},
    }
    for name, reading in readings.items():
        if reading.get("error"):
            found.append(f"{name}: {reading['error']}")
        if reading.get("mismatches"):
            found.append(
                f"{name}: {reading['mismatches']} of {reading['runs']} runs differ from the plain session"
            )
    return found


def _has_cuda() -> bool:
    import onnxruntime as ort

    load_cuda_libraries(ort)
    return "CUDAExecutionProvider" in ort.get_available_providers()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_graph_probe", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("model", type=Path, help="a classifier entry's model.onnx (fixed non-batch axes)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--rows", type=int, default=8, help="the first bucket's rows (then 2x and 4x)")
    parser.add_argument("--runs", type=int, default=200, help="bound runs on the other thread")
    parser.add_argument("--output", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"{args.model} is not a file")
    if args.device == "cuda" and not _has_cuda():
        parser.error(
            "ONNX Runtime here has no CUDA provider (onnxruntime-gpu and a GPU): --device cpu runs the logic"
        )
    result = run(args.model, args.device, args.rows, max(args.runs, 8))
    text = json.dumps(result, indent=1)
    print(text)
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
    found = problems(result)
    for line in found:
        print(f"problem: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
