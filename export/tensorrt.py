"""TensorRT 10 engines (``model.plan``) built from the exported ONNX graph and its spec.

Used when ``tensorrt`` imports and a CUDA GPU is present; otherwise the ``<name>_trt`` entries are
skipped with a one-line reason. Optimization profiles come from the same :class:`GraphSpec` that drove
the ONNX export; int8 engines come from the QDQ graph (explicit quantization, no calibrator). A plan
runs only under the TensorRT version and on the GPU model it was built with, so each records
``engine_target()`` in its kiln.json ``export`` settings, and a different target rebuilds it.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from export.specs import GraphSpec

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 1 << 30
# The TensorRT major version whose builder API this module is written to: weakly typed networks, fp16
# through BuilderFlag.FP16 (deprecated in 10.12, removed in 11), and networks explicit-batch without a
# flag (create_network(0): before 10 that is an implicit-batch network, which the ONNX parser refuses).
# Another major is skipped with a reason.
SUPPORTED_MAJOR = 10
MODES = ("auto", "off", "on")
# The precisions an engine is built in. Not int8: TensorRT's ONNX parser takes Q/DQ as symmetric int8
# only (a DequantizeLinear's zero point must be 0; a uint8 one is read as int8), and the int8 entry's
# graph is ONNX Runtime's CPU format, uint8 activations with their own zero points (export/quantize.py).
ENGINE_PRECISIONS = ("fp32", "fp16")
NO_INT8_ENGINE = (
    "TensorRT skipped: the int8 graph has uint8 activations with non-zero zero points, and TensorRT "
    "builds int8 only from symmetric int8 Q/DQ"
)

Shape = tuple[int, ...]


class TensorRTError(RuntimeError):
    """TensorRT was required but is unavailable, or the engine could not be built."""


@dataclass(frozen=True)
class Profile:
    """min/opt/max shapes of one input (one TensorRT optimization profile entry)."""

    name: str
    min: Shape
    opt: Shape
    max: Shape


def optimization_profile(spec: GraphSpec) -> list[Profile]:
    """One profile over every input: each dynamic axis at its min/opt/max from the spec."""
    pick = {k: {a: getattr(r, k) for a, r in spec.axes.items()} for k in ("min", "opt", "max")}
    return [
        Profile(t.name, *(spec.concrete_shape(t, pick[k]) for k in ("min", "opt", "max")))
        for t in spec.inputs
    ]


def unavailable_reason() -> str | None:
    """Why TensorRT engines cannot be built here, or None when they can."""
    try:
        import tensorrt
    except ImportError:
        return "TensorRT skipped: the tensorrt Python package is not installed (install the gpu extra)"
    version = str(getattr(tensorrt, "__version__", ""))
    major = version.split(".")[0]
    if major.isdigit() and int(major) != SUPPORTED_MAJOR:
        newer = int(major) > SUPPORTED_MAJOR
        why = "BuilderFlag.FP16, which TensorRT 11 removed" if newer else "explicit-batch networks by default"
        return (
            f"TensorRT skipped: tensorrt {version} is installed, and Kiln builds engines with TensorRT "
            f"{SUPPORTED_MAJOR}'s API ({why}); install tensorrt=={SUPPORTED_MAJOR}.* "
            f"(tensorrt<{SUPPORTED_MAJOR + 1} in the gpu extra, constraints/gpu.txt)"
        )
    try:
        import torch

        if not torch.cuda.is_available():
            return "TensorRT skipped: no CUDA GPU is available"
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return "TensorRT skipped: torch is missing"
    return None


def engine_target() -> dict[str, str]:
    """What a plan built here is tied to: the TensorRT version, and the name and compute capability of
    the GPU it is built on (TensorRT's engine compatibility: engines are portable across neither)."""
    return dict(_engine_target())


@functools.cache
def _engine_target() -> dict[str, str]:
    import tensorrt as trt
    import torch

    device = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(device)
    return {
        "version": str(trt.__version__),
        "device": torch.cuda.get_device_name(device),
        "compute_capability": f"{major}.{minor}",
    }


def should_build(mode: str) -> tuple[bool, str]:
    """(build?, reason) for ``--tensorrt auto|off|on``; ``on`` without TensorRT is an error."""
    if mode not in MODES:
        raise ValueError(f"--tensorrt must be one of {MODES}, got {mode!r}")
    if mode == "off":
        return False, "TensorRT skipped: disabled with --tensorrt off"
    reason = unavailable_reason()
    if reason and mode == "on":
        raise TensorRTError(reason.replace("skipped", "required by --tensorrt on, but unavailable"))
    return reason is None, reason or "TensorRT available"


def _parse(trt: object, builder: object, logger: object, onnx_path: Path) -> tuple[object, object]:
    """(network, parser): the parser is returned so it lives as long as the network."""
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTError(f"{onnx_path}: TensorRT could not parse the ONNX graph: {errors}")
    return network, parser


def _builder_config(trt: object, builder: object, spec: GraphSpec, precision: str, cache: bytes) -> object:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # scales come from the graph's Q/DQ nodes
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for p in optimization_profile(spec):
        profile.set_shape(p.name, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)
    attach_timing_cache(config, cache)
    return config


def attach_timing_cache(config: object, cache: bytes) -> None:
    """Build with the timing cache ``cache`` (b"": a new one), or a new one where TensorRT refuses it.

    TensorRT refuses a cache another GPU model wrote (``set_timing_cache`` returns False: "a failure
    will be reported if the CUDA device property in the provided cache is different") and one it cannot
    read (``create_timing_cache`` gives None). Ignored, the build ran without a cache, and then
    ``get_timing_cache()`` was None: the export failed after building the engine, and again at every
    later export on this GPU, as the refused cache was never replaced. The repository's plans are
    rebuilt for a new target (``engine_target``); its cache is started afresh the same way."""
    timing = config.create_timing_cache(cache)
    if timing is not None and config.set_timing_cache(timing, ignore_mismatch=False):
        return
    if not cache:
        raise TensorRTError("TensorRT could not create an empty timing cache")
    log.warning(
        "TensorRT refused the timing cache (%d bytes, written on another GPU model or by another "
        "TensorRT version?): building with a new one, which replaces it",
        len(cache),
    )
    attach_timing_cache(config, b"")


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    spec: GraphSpec,
    *,
    precision: str = "fp32",
    timing_cache: Path | None = None,
) -> Path:
    """Parse ``onnx_path``, build a serialized engine into ``plan_path``; reuse and update the timing cache."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, onnx_path)
    cache = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    config = _builder_config(trt, builder, spec, precision, cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"{onnx_path}: TensorRT failed to build a {precision} engine")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    if timing_cache is not None:
        write_timing_cache(timing_cache, bytes(config.get_timing_cache().serialize()))
    log.info("built TensorRT %s engine %s", precision, plan_path)
    return plan_path


def write_timing_cache(path: Path, data: bytes) -> None:
    """Replace the timing cache at ``path`` with ``data`` whole or not at all: written in place, a build
    killed or out of room mid-write (or two exports writing at once) left a torn cache, which the next
    build handed TensorRT. The bytes go to a file of this writer's own beside it (created with the
    umask's mode, as the cache was), renamed over it once complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
