"""Classifier engines side by side: PyTorch eager against ONNX Runtime fp32/fp16/int8 (and TensorRT).

Every engine gets the same work: a batch of raw UINT8 NHWC images, normalised and laid out inside the
engine (the exported graphs do it in-graph; the PyTorch engine does it in eager ops), so the figures
compare what a server would actually call. Each engine runs in its own process, so its peak resident
memory is its own and one engine's thread pools never slow another.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.inputs import classifier_checkpoint, read_meta, source_key
from bench.stats import summarize, time_calls
from kiln.processes import end_with_parent
from serving.execution.version_policy import served_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineJob:
    engine: str  # "pytorch" | "onnxruntime" | "tensorrt"
    precision: str  # fp32 | fp16 | int8
    artifact: str  # checkpoint path (pytorch) or model file (onnx / plan)
    input_shape: tuple[int, int, int]  # H, W, C
    batch_sizes: tuple[int, ...]
    threads: int
    budget_s: float
    sessions: int = 1  # > 1: that many sessions of ``threads`` threads, called at once (see _measure)

    @property
    def label(self) -> str:
        """The engine as the tables name it: ``onnxruntime``, or ``onnxruntime x2`` for two sessions."""
        return self.engine if self.sessions == 1 else f"{self.engine} x{self.sessions}"


def classifier_jobs(
    repository: Path, checkpoints: Path, model: str, batch_sizes, threads, budget_s
) -> list[EngineJob]:
    """One job per engine/precision of entry ``model`` and its precision twins (the entries exported
    from its checkpoint: not another checkpoint's entries of the same architecture), and the PyTorch
    job on that checkpoint (:func:`bench.inputs.classifier_checkpoint`)."""
    family = source_key(read_meta(repository / model), model)
    ckpt = classifier_checkpoint(repository, checkpoints, model)
    jobs = []
    for entry in sorted(p.parent for p in repository.glob("*/kiln.json")):
        meta = read_meta(entry)
        if meta.get("task") != "classify" or source_key(meta, entry.name) != family:
            continue
        h, w, c = (int(d) for d in meta["inputs"][0]["dims"][1:])
        try:  # the version its version_policy serves (kiln.json's is the one written last: maybe staged)
            version = Path(served_version(str(entry)))
        except (OSError, ValueError):  # no config, or no version served: nothing to measure
            continue
        artifact = next(
            (version / f for f in ("model.onnx", "model.plan") if (version / f).exists()),
            None,
        )
        if artifact is None:
            continue
        engine = "tensorrt" if artifact.suffix == ".plan" else "onnxruntime"
        jobs.append(
            EngineJob(
                engine,
                meta.get("precision", "fp32"),
                str(artifact),
                (h, w, c),
                engine_batches(engine, batch_sizes, meta, entry.name),
                threads,
                budget_s,
            )
        )
        if engine == "onnxruntime" and meta.get("precision", "fp32") == "fp32" and threads > 1:
            # ONNX Runtime's other layout for the same cores: one single-thread session per core, each
            # running its own batch (as the gateway's workers do); its best batch is the fair ceiling
            jobs.append(dataclasses.replace(jobs[-1], threads=1, sessions=threads))
    if jobs and ckpt.is_file():  # once, whichever precisions were exported
        shape = jobs[0].input_shape
        jobs.insert(0, EngineJob("pytorch", "fp32", str(ckpt), shape, batch_sizes, threads, budget_s))
    return jobs


def engine_batches(
    engine: str, batch_sizes: tuple[int, ...], meta: dict[str, Any], name: str
) -> tuple[int, ...]:
    """The batch sizes an entry's engine is measured at: a TensorRT plan's only up to its
    ``max_batch_size``, the max of the one optimization profile it was built with (export/tensorrt.py).
    TensorRT refuses an input shape beyond the profile (``set_input_shape`` returns False, which the
    runner does not check), so the gpu profile's batch 256 on a plan built for 64 timed a refused call,
    or failed the engine's job and with it its other rows."""
    limit = int(meta.get("max_batch_size") or 0)
    if engine != "tensorrt" or limit <= 0:
        return tuple(batch_sizes)
    kept = tuple(b for b in batch_sizes if b <= limit)
    if len(kept) < len(batch_sizes):
        log.info(
            "%s: TensorRT plan measured at batches %s, not %s (beyond its profile's max_batch_size %d)",
            name,
            list(kept),
            [b for b in batch_sizes if b > limit],
            limit,
        )
    return kept


def run_jobs(
    jobs: list[EngineJob],
    progress: Callable[[str], None] = log.info,
    runner: Callable[[EngineJob], Callable[[np.ndarray], Any]] | None = None,
) -> list[dict[str, Any]]:
    """Run each job in a fresh spawned process; a failing engine is reported, never fatal.

    ``runner(job)`` builds the job's callable (default ``make_runner``; the GPU profile passes its own,
    a module-level function so the spawned process can import it)."""
    ctx = mp.get_context("spawn")
    results = []
    for job in jobs:
        progress(f"engine {job.engine} {job.precision} on {Path(job.artifact).name}")
        with ctx.Pool(1, initializer=end_with_parent) as pool:  # a killed bench's job ends with it
            try:
                results.extend(pool.apply(_measure, (job, runner or make_runner)))
            except Exception as exc:  # noqa: BLE001 - one engine failing must not lose the others
                results.append({"engine": job.label, "precision": job.precision, "error": str(exc)})
    return results


def _measure(
    job: EngineJob, make: Callable[[EngineJob], Callable[[np.ndarray], Any]]
) -> list[dict[str, Any]]:
    """Each batch size: latency of one call and throughput; with ``job.sessions`` > 1, that many
    sessions called at once from as many threads (throughput: all of them together)."""
    runs = [make(dataclasses.replace(job, sessions=1)) for _ in range(job.sessions)]
    rng = np.random.default_rng(0)
    rows = []
    for batch in job.batch_sizes:
        images = rng.integers(0, 256, size=(batch, *job.input_shape), dtype=np.uint8)
        if len(runs) == 1:
            lat = time_calls(lambda images=images: runs[0](images), budget_s=job.budget_s, max_calls=500)
            throughput = batch / (summarize(lat).mean_ms / 1e3)
        else:
            lat, throughput = _concurrent_calls(runs, images, job.budget_s)
        rows.append(
            {
                "engine": job.label,
                "precision": job.precision,
                "batch": batch,
                **summarize(lat).as_dict(),
                "throughput_ips": throughput,
                "peak_rss_mib": peak_rss_mib(),
                "threads": job.threads,
                "sessions": job.sessions,
            }
        )
    return rows


def peak_rss_mib() -> float:
    """This process's own peak resident memory: ``VmHWM``, which a new process image starts afresh. Not
    ``ru_maxrss``: Linux carries it over fork and exec, so every spawned engine read its parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no procfs: the best there is


def _concurrent_calls(
    runs: list[Callable[[np.ndarray], Any]], images: np.ndarray, budget_s: float, warmup: int = 3
) -> tuple[list[float], float]:
    """Every run called back to back from its own thread, started together after warm-up, for
    ``budget_s``: the latencies of all calls, and images per second over the first start to the last
    finish (a call under way at the deadline is waited for and counted)."""
    for run in runs:
        for _ in range(warmup):
            run(images)
    latencies: list[list[float]] = [[] for _ in runs]
    finished = [0.0] * len(runs)
    ready = threading.Barrier(len(runs) + 1)
    start = deadline = 0.0

    def loop(i: int) -> None:
        ready.wait()
        while True:
            began = time.perf_counter()
            runs[i](images)
            finished[i] = time.perf_counter()
            latencies[i].append(finished[i] - began)
            if finished[i] >= deadline:
                return

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(runs))]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    deadline = start + budget_s
    ready.wait()
    for thread in threads:
        thread.join()
    calls = sum(len(lat) for lat in latencies)
    return [x for lat in latencies for x in lat], calls * images.shape[0] / (max(finished) - start)


def make_runner(job: EngineJob) -> Callable[[np.ndarray], Any]:
    if job.engine == "pytorch":
        return _torch_runner(job)
    if job.engine == "onnxruntime":
        return _ort_runner(job)
    if job.engine == "tensorrt":
        return _trt_runner(job)
    raise ValueError(f"unknown engine {job.engine!r}")


def _torch_runner(job: EngineJob) -> Callable[[np.ndarray], Any]:
    import torch

    from training.checkpoint import load_checkpoint, rebuild_model

    torch.set_num_threads(job.threads)
    ckpt = load_checkpoint(job.artifact)
    model = rebuild_model(ckpt)
    pre = ckpt["preprocessing"]
    mean = torch.tensor(pre["mean"]).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(pre["std"]).view(1, -1, 1, 1) * 255.0

    @torch.inference_mode()
    def run(images: np.ndarray):
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()  # (B, C, H, W)
        logits = model((x - mean) / std)
        return torch.softmax(logits, dim=1)

    return run


def _ort_runner(job: EngineJob) -> Callable[[np.ndarray], Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = job.threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(job.artifact, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images})


def _trt_runner(job: EngineJob) -> Callable[[np.ndarray], Any]:
    """TensorRT 10 execution with torch CUDA tensors as device buffers (only where a GPU exists)."""
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(job.artifact).read_bytes())
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    stream = torch.cuda.Stream()

    def run(images: np.ndarray):
        x = torch.from_numpy(images).cuda()
        context.set_input_shape(inputs[0], tuple(x.shape))
        context.set_tensor_address(inputs[0], x.data_ptr())
        outs = []
        for n in names:
            if n in inputs:
                continue
            shape = tuple(context.get_tensor_shape(n))
            out = torch.empty(shape, dtype=torch.float32, device="cuda")
            context.set_tensor_address(n, out.data_ptr())
            outs.append(out)
        # the input's copy and the outputs' allocation were queued on torch's current stream: the
        # engine's stream waits for them (CUDA orders nothing across streams by itself)
        stream.wait_stream(torch.cuda.current_stream())
        context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return [o.cpu() for o in outs]

    return run


def default_threads() -> int:
    from serving.execution.cpus import usable_cpus

    return usable_cpus()
