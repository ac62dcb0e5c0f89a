"""Where an ONNX entry runs (provider, device) and at which batch shapes (buckets), from its config.

Read once at load by the embedded ONNX Runtime backend, and shown: in the load log, in the
``/v2/models/{name}/config`` response parameters (``kiln_provider``, ``kiln_device``,
``kiln_buckets``, ``kiln_cuda_graph_replay``) and as the ``kiln_model_placement`` gauge. The config keys are the GPU export's
(docs/kiln-json.md, "GPU configs"):

- ``instance_group.kind``: ``KIND_GPU`` needs ONNX Runtime's CUDA provider; without it the model
  fails to load with a message naming it (never a silent CPU fallback). ``KIND_AUTO`` (or no group)
  is Triton's "GPU when there is one".
- ``parameters.kiln_bucketing``: ``"1"`` pads every merged batch up to the smallest bucket that
  holds it (buckets: the preferred batch sizes plus ``max_batch_size``) and runs it on that bucket's
  own session, so a CUDA session only ever sees one shape. Absent: on for GPU, off for CPU.
- ``parameters.cudnn_conv_algo_search``: ``"0"``/``"1"``/``"2"`` = EXHAUSTIVE/HEURISTIC/DEFAULT
  (Triton's key and encoding), passed to the CUDA provider; another value fails the load, naming it.
- ``parameters.kiln_cuda_graphs``: ``"1"`` replays each bucket's session as a CUDA graph on bound
  buffers (:mod:`serving.execution.bound_session`); it needs the CUDA provider and bucketing, and is
  ignored with a warning otherwise. A model whose graphs cannot be bound or captured at load (a
  non-batch dimension not fixed, a node the CUDA provider does not run) serves without them, with
  a warning naming why, and ``kiln_cuda_graph_replay`` says ``off``.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2

log = logging.getLogger(__name__)

ONNX_DTYPES = {  # ONNX Runtime's type names of tensors, as numpy types
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(uint16)": np.uint16,
    "tensor(int16)": np.int16,
    "tensor(uint32)": np.uint32,
    "tensor(int32)": np.int32,
    "tensor(uint64)": np.uint64,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
CONV_ALGO_SEARCH = {"0": "EXHAUSTIVE", "1": "HEURISTIC", "2": "DEFAULT"}
# Each instance is a session of its own (its weights shared, its arena and thread not): a count beyond
# this is a typo (count: 1000 for 10), which would open sessions until the memory ran out, not a layout.
MAX_INSTANCES = 64


class PlacementError(RuntimeError):
    """A config asks for something this machine cannot give (e.g. a GPU without a CUDA provider)."""


@dataclass(frozen=True)
class Placement:
    """The provider, device and bucket sizes of one model."""

    provider: str
    device: str  # "cpu" or "cuda:<id>"
    buckets: tuple[int, ...] = ()  # empty: no padding, one session sees every batch size
    provider_options: dict[str, str] | None = None
    cuda_graphs: bool = False  # each bucket's session replayed as a CUDA graph on bound buffers

    def providers(self) -> list[Any]:
        """The ``providers=`` argument of ``ort.InferenceSession``."""
        if self.provider == CUDA:
            return [(CUDA, dict(self.provider_options or {})), CPU]
        return [CPU]

    def config_parameters(self) -> dict[str, dict[str, str]]:
        """The placement as Triton-style model-config parameters (``{"key": {"string_value": ...}}``)."""
        buckets = ",".join(map(str, self.buckets)) or "off"
        values = {"kiln_provider": self.provider, "kiln_device": self.device, "kiln_buckets": buckets}
        values["kiln_cuda_graph_replay"] = (
            "on" if self.cuda_graphs else "off"
        )  # the config asks kiln_cuda_graphs
        return {key: {"string_value": value} for key, value in values.items()}

    def instance_group(self, name: str) -> Any:
        """The instance group Triton shows for a config that gives none (one it makes, named as the
        model, its kind resolved), of the one instance this placement runs: clients reading
        ``config["instance_group"][0]`` from Triton found an empty list here."""
        group = model_config_pb2.ModelInstanceGroup(name=name, count=1)
        group.kind = model_config_pb2.ModelInstanceGroup.KIND_CPU
        if self.provider == CUDA:
            group.kind = model_config_pb2.ModelInstanceGroup.KIND_GPU
            group.gpus.append(int(self.device.partition(":")[2] or 0))
        return group

    def bucket_for(self, items: int) -> int:
        """The smallest bucket holding ``items`` rows (``items`` itself when unbucketed or too large)."""
        index = bisect.bisect_left(self.buckets, items)
        return self.buckets[index] if index < len(self.buckets) else items


def without_cuda_graphs(where: Placement) -> Placement:
    """``where`` with its buckets run as plain sessions (a graph that could not be captured)."""
    options = {k: v for k, v in (where.provider_options or {}).items() if k != "enable_cuda_graph"}
    return dataclasses.replace(where, provider_options=options, cuda_graphs=False)


def plan(config: Any, available: list[str]) -> Placement:
    """The placement a Triton ModelConfig asks for, on a machine whose ORT has ``available`` providers."""
    kinds = {model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group}
    asks_gpu = "KIND_GPU" in kinds
    if asks_gpu and CUDA not in available:
        raise PlacementError(
            f"model {config.name!r} asks for KIND_GPU but ONNX Runtime has no CUDA provider "
            f"(available: {', '.join(available)}); install onnxruntime-gpu on a CUDA machine, or make its "
            "config.pbtxt's instance_group kind KIND_CPU (a Kiln export: export it with --device cpu)"
        )
    on_gpu = CUDA in available and (asks_gpu or "KIND_AUTO" in kinds or not kinds)
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    if on_gpu:
        gpus = [gpu for group in config.instance_group for gpu in group.gpus]
        device_id = str(gpus[0]) if gpus else "0"
        # device 0 is the provider's default; naming it makes ONNX Runtime >= 1.26 first look for a plugin
        # EP device and warn, for every session, that it found none
        options = {"device_id": device_id} if device_id != "0" else {}
        search = conv_algo_search(config, parameters.get("cudnn_conv_algo_search", ""))
        if search:
            options["cudnn_conv_algo_search"] = search
        placement = Placement(CUDA, f"cuda:{device_id}", provider_options=options)
        _warn_one_device(config, kinds, sorted(set(gpus)), placement.device)
    else:
        placement = Placement(CPU, "cpu")
    if _bucketing(parameters.get("kiln_bucketing"), on_gpu) and config.max_batch_size > 0:
        sizes = {
            int(s) for s in config.dynamic_batching.preferred_batch_size if 0 < s <= config.max_batch_size
        }
        placement = dataclasses.replace(
            placement, buckets=tuple(sorted(sizes | {int(config.max_batch_size)}))
        )
    if parameters.get("kiln_cuda_graphs", "0").strip() not in ("", "0"):
        if on_gpu and placement.buckets:
            options = {**(placement.provider_options or {}), "enable_cuda_graph": "1"}
            placement = dataclasses.replace(placement, provider_options=options, cuda_graphs=True)
        else:
            log.warning(
                "model %s: kiln_cuda_graphs needs the CUDA provider and bucketing; its sessions run "
                "without CUDA graphs",
                config.name,
            )
    return placement


def conv_algo_search(config: Any, value: str) -> str:
    """The CUDA provider's ``cudnn_conv_algo_search`` of a config's parameter: Triton's ``0``/``1``/``2``
    or ONNX Runtime's own name ("" where the config has none). Any other value is a ``PlacementError``
    naming them: ONNX Runtime takes exactly EXHAUSTIVE, HEURISTIC or DEFAULT, and a provider it cannot
    create falls back to the CPU, which :func:`check_session` then blamed on the CUDA libraries."""
    value = value.strip()
    if not value:
        return ""
    name = CONV_ALGO_SEARCH.get(value, value.upper())
    if name not in CONV_ALGO_SEARCH.values():
        raise PlacementError(
            f'model {config.name!r}: parameter cudnn_conv_algo_search is {value!r}; use "0" (EXHAUSTIVE), '
            '"1" (HEURISTIC) or "2" (DEFAULT), Triton\'s encoding (or leave it out: EXHAUSTIVE)'
        )
    return name


_cuda_libraries_loaded = False
# held while they load: the backend opens several models' sessions at once, and a second caller must
# not go on to open a CUDA session before the first has loaded the libraries
_cuda_libraries_lock = threading.Lock()


def load_cuda_libraries(ort: Any) -> None:
    """Make the CUDA and cuDNN libraries that ONNX Runtime's CUDA provider links against loadable, once
    per process: ``import torch`` (a CUDA build loads its own) where torch is installed, then
    ``onnxruntime.preload_dlls()`` (ORT >= 1.21: the ``nvidia-*`` wheels' libraries). Without them the
    provider fails to load and ONNX Runtime falls back to the CPU, which :func:`check_session` refuses."""
    global _cuda_libraries_loaded
    with _cuda_libraries_lock:
        if _cuda_libraries_loaded:
            return
        _cuda_libraries_loaded = True
        with contextlib.suppress(ImportError):
            import torch  # noqa: F401 - imported for its side effect: the CUDA libraries it loads
        if hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()
            except Exception as exc:  # noqa: BLE001 - check_session reports what finally did not load
                log.warning("onnxruntime.preload_dlls() failed: %s", exc)


def check_session(session: Any, where: Placement, name: str) -> None:
    """Refuse a session whose wanted provider did not load: ONNX Runtime would run it on the CPU and
    only log an error, so a GPU config would silently serve from the CPU."""
    active = getattr(session, "get_providers", lambda: [where.provider])()
    if active and active[0] != where.provider:
        raise PlacementError(
            f"model {name!r}: {where.provider} did not load (active providers: {', '.join(active)}); "
            "ONNX Runtime's log above says which library it could not open (CUDA and cuDNN must match "
            "the onnxruntime-gpu build: its `cuda` and `cudnn` extras install them)"
        )


def _bucketing(value: str | None, on_gpu: bool) -> bool:
    if value in (None, ""):
        return on_gpu
    return value.strip().lower() in ("1", "true", "on", "yes")


def pad_rows(inputs: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Each input with zero rows appended up to ``rows`` along the batch axis (no copy when already there)."""
    out = {}
    for name, array in inputs.items():
        missing = rows - array.shape[0]
        if missing <= 0:
            out[name] = array
            continue
        padded = np.zeros((rows, *array.shape[1:]), dtype=array.dtype)
        padded[: array.shape[0]] = array
        out[name] = padded
    return out


def zero_inputs(session: Any, rows: int) -> dict[str, np.ndarray]:
    """Zero feeds of ``rows`` rows for a session's inputs (dynamic non-batch axes as 1), empty strings
    for a STRING input: the warm-up. Each of the graph's own type (a uint16 input fed float32 zeros failed
    the load of a model Triton serves)."""
    feeds = {}
    for meta in session.get_inputs():
        shape = (rows, *[d if isinstance(d, int) and d > 0 else 1 for d in meta.shape[1:]])
        if meta.type == "tensor(string)":
            feeds[meta.name] = np.full(shape, "", dtype=object)
        else:
            feeds[meta.name] = np.zeros(shape, dtype=ONNX_DTYPES.get(meta.type, np.float32))
    return feeds


def _warn_one_device(config: Any, kinds: set[str], gpus: list[int], device: str) -> None:
    """Every instance of a model runs on one device here, where Triton puts ``count`` instances on each
    GPU a group lists and a KIND_CPU group's on the CPU: a config asking for more is told so."""
    spread = []
    if len(gpus) > 1:
        spread.append(f"instances on gpus {gpus}")
    if "KIND_CPU" in kinds:
        spread.append("a KIND_CPU group beside a GPU one")
    if spread:
        log.warning(
            "model %s: its instance_group asks for %s; the embedded backend runs all %d instances on %s "
            "(serve it with --backend triton to spread them)",
            config.name,
            " and ".join(spread),
            instance_count(config),
            device,
        )


def instance_count(config: Any) -> int:
    """The sessions the config's ``instance_group`` asks for (a group's unset count is 1, as in Triton;
    no group is one instance); more than ``MAX_INSTANCES`` in all is a ``PlacementError`` naming them."""
    counts = [max(1, group.count) for group in config.instance_group]
    total = sum(counts) or 1
    if total > MAX_INSTANCES:
        raise PlacementError(
            f"model {config.name!r}: instance_group asks for {total} instances ({' + '.join(map(str, counts))}); "
            f"at most {MAX_INSTANCES} are opened, each a session with its own memory arena: lower count"
        )
    return total
