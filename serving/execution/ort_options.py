"""How the embedded backend opens its ONNX Runtime sessions: the options every model shares, the
session config entries of their thread spinning, and what a translator decoder on a device asks of
:mod:`serving.decoding.resident`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.execution import placement


@dataclass(frozen=True)
class OrtOptions:
    """Session and queueing options shared by every model."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    # How long an idle intra-op thread spins for more work before it sleeps (ONNX Runtime's
    # ``session.intra_op.spin_duration_us``). By default ORT's threads spin ~40 ms after every run,
    # taking the cores the event loop needs (measured on 2 cores: c=1 p50 4.4 -> 1.7 ms without
    # spinning); never spinning pays a thread wake-up on every operator instead. A short spin bridges
    # the gaps between one run's operators and stops right after the run: resnet18 batch 1 on 2 threads
    # with 0.7 ms between runs, 1.05 -> 0.68 ms a run and less CPU (1.74 -> 1.40 ms an iteration); a run's
    # idle CPU afterwards 40 ms -> 0.1 ms. 0: never spin; None: ORT's default (unbounded).
    spin_us: int | None = 20
    # A lone request (one item, nothing waiting) runs on a session of its own with this many intra-op
    # threads: at low load the idle cores speed it up, under load batches form and run on the batch
    # sessions. None: the CPUs this process may use (affinity capped by a cgroup quota); 0, or not more
    # than ``intra_op_threads``: off. Costs one more session (the weights once more) per instance.
    lone_request_threads: int | None = None
    # The lone session's idle threads spin longer: through the gap to a lone client's next request
    # (~0.5 ms of protocol work at c=1), so its next run finds its pool awake and its caches warm.
    # It runs only while nothing else does, so the spin takes no core anyone needs; it ends 1 ms after
    # the last lone run. perf_analyzer c=1 (2 workers): 677-763 -> 822-847 req/s against 20 us.
    lone_spin_us: int | None = 1000
    max_queue_size: int = 128
    default_timeout_s: float | None = 30.0
    retry_after_s: float = 1.0
    shutdown_grace_s: float = 30.0
    # Every CPU session of a model (each instance's batch and lone sessions) maps one copy of its
    # weights, optimized once for this machine (serving.execution.shared_weights); off: one each.
    share_weights: bool = True
    # Where the optimized models go: the directory ``serving.workers`` made for all of its workers;
    # None: one of this backend's own, removed when it stops.
    weights_dir: Path | None = None
    # Seconds a batch instance of a CPU model with nothing to run keeps the memory arena its merged
    # batches grew (ONNX Runtime keeps its largest batch's activations for good) before shrinking it;
    # None: kept until the model unloads.
    release_idle_s: float | None = 10.0
    # Model versions the backend loads at once (their sessions opened, the weight store's graphs
    # optimized, on threads of ONNX Runtime that hold no GIL); None: the CPUs this process may use, at
    # most 4 (serving.execution.onnxruntime.load_threads); 1: one after another.
    load_threads: int | None = None


# ONNX Runtime's own logger (severities 0 verbose, 1 info, 2 warning, 3 error, 4 fatal) at the gateway's
# ``--log-level``: it writes to stderr in a format of its own, at warning by default whatever the level
# (a foreign model's unused initializers, removed as it loads: raw lines under
# ``--log-level error``). At ``info`` it keeps its warnings: its info lines (a dozen a session opened)
# are debugging detail.
ORT_LOG_SEVERITY = {"critical": 4, "error": 3, "warning": 2, "info": 2, "debug": 1, "trace": 0}


# ONNX Runtime reads ``session.intra_op.spin_duration_us`` from 1.26 on (microsoft/onnxruntime#27916);
# older versions ignore it and would spin unbounded, so there a bounded spin means no spinning.
BOUNDED_SPIN_SINCE = (1, 26)


def spin_entries(spin_us: int | None, ort_version: str) -> dict[str, str]:
    """ONNX Runtime session config entries for ``OrtOptions.spin_us`` on ONNX Runtime ``ort_version``."""
    if spin_us is None:
        return {}
    release = tuple(int(part) for part in ort_version.split(".")[:2] if part.isdigit())
    if spin_us <= 0 or release < BOUNDED_SPIN_SINCE:
        return {"session.intra_op.allow_spinning": "0"}
    return {"session.intra_op.allow_spinning": "1", "session.intra_op.spin_duration_us": str(spin_us)}


def resident_request(where: placement.Placement, config: Any, model_file: Path) -> dict[str, Any] | None:
    """How a translator decoder placed at ``where`` steps with its cache on the device
    (:class:`serving.decoding.resident_layout.ResidentDecoder`'s arguments), or None: on the host.

    ``KILN_RESIDENT_DECODER``: ``1`` (or ``on``), decoders on the CUDA provider, each layout replayed
    as a CUDA graph unless the config's ``kiln_cuda_graphs`` is ``"0"``; ``force``, CPU decoders too
    (no graphs: the tests' way to run the device path without a GPU); unset or ``0``, none. Off by
    default: on an H200 the engine alone decodes 1.6-2.5x faster with it, but through the gateway
    (one process bound elsewhere) it measured 0.92x, and 0.66x with four processes sharing the GPU
    (README, "GPU and TensorRT")."""
    mode = os.environ.get("KILN_RESIDENT_DECODER", "0").strip().lower()
    on_gpu = where.provider == placement.CUDA
    if mode not in ("1", "on", "force") or not (on_gpu or mode == "force"):
        return None
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    graphs = on_gpu and parameters.get("kiln_cuda_graphs", "1").strip() not in ("", "0")
    device_id = int(where.device.partition(":")[2] or 0)
    providers = placement.without_cuda_graphs(where).providers()
    return {
        "model_file": model_file,  # the entry's own graph (not a CPU-only fused one)
        "device": "cuda" if on_gpu else "cpu",
        "device_id": device_id,
        "providers": providers,
        "cuda_graphs": graphs,
    }
