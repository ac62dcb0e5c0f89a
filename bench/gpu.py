"""`make bench PROFILE=gpu`: the exported classifier on a CUDA GPU, every engine side by side.

PyTorch eager on CUDA (fp32, and fp16 under autocast), ONNX Runtime's CUDA provider on the fp32 and
fp16 graphs with and without IO binding, its TensorRT provider when it really loads, and serialized
TensorRT engines when export built them. Each job runs through ``engines.run_jobs`` (one spawned
process per engine, the same timing and report rows as the CPU engines). Without CUDA the profile
says so and measures nothing.

``onnxruntime-cuda`` gets numpy in and numpy out, so each call pays its host/device copies, as a
server answering host requests does; ``onnxruntime-cuda+iobinding`` keeps the input and outputs on
the GPU (bound once per batch size), which is the device compute alone.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import engines, report
from bench.engines import EngineJob

log = logging.getLogger(__name__)

TORCH_CUDA = "pytorch-cuda"
ORT_CUDA = "onnxruntime-cuda"
ORT_CUDA_IOBINDING = "onnxruntime-cuda+iobinding"
ORT_TENSORRT = "onnxruntime-tensorrt"
GPU_PRECISIONS = ("fp32", "fp16")  # int8 QDQ graphs target the CPU provider
# One input shape per batch size, so EXHAUSTIVE search plans each shape once, during the warm-up calls.
# No device_id: device 0 is the default, and naming it makes ONNX Runtime >= 1.26 warn at every session.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "EXHAUSTIVE"}


@dataclass(frozen=True)
class CudaStatus:
    """What this machine offers: PyTorch CUDA, and ONNX Runtime's execution providers."""

    torch_cuda: bool
    ort_providers: tuple[str, ...]
    device_name: str | None = None

    @property
    def ort_cuda(self) -> bool:
        return "CUDAExecutionProvider" in self.ort_providers

    @property
    def usable(self) -> bool:
        return self.torch_cuda or self.ort_cuda

    def reason(self) -> str:
        """Why nothing (or only part) can be measured, in one line."""
        parts = []
        if not self.torch_cuda:
            parts.append("PyTorch sees no CUDA GPU")
        if not self.ort_cuda:
            parts.append(
                f"ONNX Runtime has no CUDA provider (providers: {', '.join(self.ort_providers) or 'none'})"
            )
        return "; ".join(parts) or f"CUDA available ({self.device_name})"


def onnxruntime() -> Any:
    """``onnxruntime`` imported after ``torch``, whose import loads the CUDA libraries the CUDA provider
    links against (preloaded explicitly where ONNX Runtime offers it; see ../shared/gpu/prepare.sh)."""
    import torch

    ort = importlib.import_module("onnxruntime")
    if torch.cuda.is_available() and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    return ort


def cuda_status() -> CudaStatus:
    """What PyTorch and ONNX Runtime can run on here."""
    import torch

    ort = onnxruntime()
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return CudaStatus(torch.cuda.is_available(), tuple(ort.get_available_providers()), name)


def gpu_jobs(
    repository: Path, checkpoints: Path, model: str, batch_sizes, budget_s: float, status: CudaStatus
) -> list[EngineJob]:
    """The GPU jobs for ``model``'s exported entries, limited to what ``status`` says can run."""
    jobs = []
    for job in engines.classifier_jobs(repository, checkpoints, model, batch_sizes, 1, budget_s):
        if job.engine == "pytorch" and status.torch_cuda:
            jobs += [_as(job, TORCH_CUDA, "fp32"), _as(job, TORCH_CUDA, "fp16")]
        elif job.engine == "tensorrt" and status.torch_cuda:
            jobs.append(job)
        elif job.engine == "onnxruntime" and job.precision in GPU_PRECISIONS and status.ort_cuda:
            jobs += [_as(job, ORT_CUDA), _as(job, ORT_CUDA_IOBINDING)]
            if "TensorrtExecutionProvider" in status.ort_providers:
                jobs.append(_as(job, ORT_TENSORRT))
    return jobs


def _as(job: EngineJob, engine: str, precision: str | None = None) -> EngineJob:
    return EngineJob(
        engine,
        precision or job.precision,
        job.artifact,
        job.input_shape,
        job.batch_sizes,
        job.threads,
        job.budget_s,
    )


def make_runner(job: EngineJob) -> Callable[[np.ndarray], Any]:
    """The runner of a GPU job (CPU engines fall through to ``engines.make_runner``)."""
    makers = {
        TORCH_CUDA: _torch_cuda_runner,
        ORT_CUDA: _ort_cuda_runner,
        ORT_CUDA_IOBINDING: _ort_cuda_runner,
        ORT_TENSORRT: _ort_tensorrt_runner,
    }
    return makers.get(job.engine, engines.make_runner)(job)


def _torch_cuda_runner(job: EngineJob) -> Callable[[np.ndarray], Any]:
    """Eager PyTorch on cuda:0; precision fp16 means autocast (weights stay fp32)."""
    import torch

    from training.checkpoint import load_checkpoint, rebuild_model

    ckpt = load_checkpoint(job.artifact)
    model = rebuild_model(ckpt).cuda()
    pre = ckpt["preprocessing"]
    mean = torch.tensor(pre["mean"], device="cuda").view(1, -1, 1, 1) * 255.0
    std = torch.tensor(pre["std"], device="cuda").view(1, -1, 1, 1) * 255.0

    @torch.inference_mode()
    def run(images: np.ndarray):
        x = torch.from_numpy(images).cuda().permute(0, 3, 1, 2).float()  # (B, C, H, W)
        with torch.autocast("cuda", dtype=torch.float16, enabled=job.precision == "fp16"):
            logits = model((x - mean) / std)  # (B, classes)
        return torch.softmax(logits.float(), dim=1).cpu()

    return run


def _session(job: EngineJob, providers: list) -> Any:
    """A session whose first provider really loaded (ONNX Runtime falls back silently otherwise)."""
    ort = onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(job.artifact, opts, providers=providers)
    wanted = providers[0][0]
    if session.get_providers()[0] != wanted:
        raise RuntimeError(f"{wanted} did not load (active providers: {session.get_providers()})")
    return session


def _ort_cuda_runner(job: EngineJob) -> Callable[[np.ndarray], Any]:
    session = _session(job, [("CUDAExecutionProvider", CUDA_OPTIONS), "CPUExecutionProvider"])
    if job.engine == ORT_CUDA_IOBINDING:
        return _io_bound(session)
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images})


def _io_bound(session: Any, device: str = "cuda") -> Callable[[np.ndarray], Any]:
    """Input copied to the GPU once per shape, outputs left on the GPU: each call is compute only.
    The runner returns the IOBinding (``copy_outputs_to_cpu()`` reads its outputs)."""
    ort = onnxruntime()
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    bound: dict[tuple[int, ...], tuple[Any, Any]] = {}

    def run(images: np.ndarray):
        if images.shape not in bound:
            value = ort.OrtValue.ortvalue_from_numpy(images, device, 0)
            binding = session.io_binding()
            binding.bind_ortvalue_input(name, value)
            for out in outputs:
                binding.bind_output(out, device, 0)
            bound[images.shape] = (binding, value)  # the value must outlive its binding
        binding = bound[images.shape][0]
        session.run_with_iobinding(binding)  # synchronizes the stream before returning
        return binding

    return run


def trt_engine_cache() -> Path:
    """This user's directory of TensorRT engines in the temporary one, private to it. One name for every
    user (``kiln-bench-trt-cache``) was the first user's on a shared GPU box: the others could not save
    their engines there (each run built them again), and loaded whatever engines its owner had put
    there. A name taken by anything but this user's private directory gives a new one for the run."""
    cache = Path(tempfile.gettempdir()) / f"kiln-bench-trt-cache-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        cache.mkdir(mode=0o700)
    found = os.lstat(cache)
    if stat.S_ISDIR(found.st_mode) and found.st_uid == os.getuid() and not found.st_mode & 0o077:
        return cache
    log.warning("%s is not a private directory of this user's: TensorRT engines built afresh", cache)
    return Path(tempfile.mkdtemp(prefix="kiln-bench-trt-cache-"))


def _ort_tensorrt_runner(job: EngineJob) -> Callable[[np.ndarray], Any]:
    """ONNX Runtime's TensorRT provider (fp16 kernels for the fp16 job), CUDA for what it leaves."""
    cache = trt_engine_cache()
    options = {
        "trt_fp16_enable": job.precision == "fp16",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
    }
    providers = [
        ("TensorrtExecutionProvider", options),
        ("CUDAExecutionProvider", CUDA_OPTIONS),
        "CPUExecutionProvider",
    ]
    session = _session(job, providers)
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images})


def engine_section(rows: list[dict[str, Any]]) -> str:
    """The GPU engines table, each row's p50 against PyTorch eager CUDA fp32 at the same batch."""
    return report.engine_section(
        rows,
        baseline=(TORCH_CUDA, "fp32"),
        speedup="speedup_vs_pytorch_cuda_fp32",
        title="Engines on the GPU (classifier)",
        extra_columns=(),
    )
