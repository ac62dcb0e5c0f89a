"""The decoder step timed in each variant a GPU decode path could take (``python -m
bench.gpu_decode_probe DECODER.onnx``; the variants are listed in :mod:`bench.gpu_decode_probe`): random
feeds of each shape, a callable per variant, medians of its calls, and ONNX Runtime's own profile."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from serving.execution.placement import CPU, CUDA, ONNX_DTYPES, load_cuda_libraries

GROWING = 16  # cache widths numpy_growing cycles through


def ort_module() -> Any:
    """onnxruntime, imported when first asked for."""
    import onnxruntime as ort

    return ort


def providers_for(device: str, graph: bool = False) -> list[Any]:
    """The providers of a session on ``device``: CUDA first (``graph``: replayed as CUDA graphs), then CPU."""
    if device == "cuda":
        return [(CUDA, {"enable_cuda_graph": "1"} if graph else {}), CPU]
    return [CPU]


def session_options(profile_prefix: str | None = None) -> Any:
    """Quiet session options; with ``profile_prefix``, ONNX Runtime's profiling on, written there."""
    options = ort_module().SessionOptions()
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def feeds_for(session: Any, rows: int, past: int, src: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds of one step: the batch axis ``rows``, the cache ``past`` columns, the encoder store
    ``rows // 4`` sentences of ``src`` positions, by each input's name and type."""
    rng = np.random.default_rng(seed)
    sentences = max(1, rows // 4)
    sizes = {"batch": rows, "past_len": past, "src_len": src, "sentences": sentences}
    feeds = {}
    for meta in session.get_inputs():
        shape = [d if isinstance(d, int) else sizes.get(d, rows) for d in meta.shape]
        dtype = ONNX_DTYPES.get(meta.type, np.float32)
        if meta.name == "row_place":
            feeds[meta.name] = (np.arange(rows) // 4 % sentences).astype(dtype)
        elif meta.name == "positions":
            feeds[meta.name] = np.full(shape, past, dtype=dtype)
        elif dtype == np.bool_:
            feeds[meta.name] = np.ones(shape, dtype=dtype)
        elif np.issubdtype(dtype, np.integer):
            feeds[meta.name] = rng.integers(4, 64, size=shape).astype(dtype)
        else:
            feeds[meta.name] = rng.standard_normal(shape).astype(dtype) * 0.5
    return feeds


def _median_ms(call: Any, repeats: int) -> float:
    call()
    call()  # warm: the provider's first calls at a shape plan it
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 4)


SMALL = ("tokens", "positions", "cache_mask", "row_place")


def _resident(session: Any, feeds: dict[str, np.ndarray], device: str, small_in: bool) -> Any:
    ort = ort_module()
    binding = session.io_binding()
    held = []
    for name, value in feeds.items():
        if small_in and name in SMALL:
            continue
        held.append(ort.OrtValue.ortvalue_from_numpy(value, device, 0))
        binding.bind_ortvalue_input(name, held[-1])
    for meta in session.get_outputs():
        binding.bind_output(meta.name, "cpu" if meta.name == "log_probs" else device, 0)

    def call() -> None:
        if small_in:
            for name in SMALL:
                if name in feeds:
                    binding.bind_cpu_input(name, feeds[name])
        session.run_with_iobinding(binding)
        binding.get_outputs()[0].numpy()

    call.held = held  # the values must outlive the binding
    return call


def advance_graph(caches: dict[str, tuple[int, ...]]) -> bytes:
    """An ONNX graph that grows each cache (``[R, H, T, D]``) by its entry (``[R, H, 1, D]``) and gathers
    the rows by ``origin`` (``[R']``): the per-step upkeep of a device-resident cache."""
    import onnx
    from onnx import TensorProto, helper

    nodes, inputs, outputs = [], [helper.make_tensor_value_info("origin", TensorProto.INT64, ["rows"])], []
    for name, shape in caches.items():
        heads, depth = shape[1], shape[3]
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", heads, "past", depth]))
        inputs.append(
            helper.make_tensor_value_info(f"{name}.entry", TensorProto.FLOAT, ["batch", heads, 1, depth])
        )
        nodes.append(helper.make_node("Concat", [name, f"{name}.entry"], [f"{name}.grown"], axis=2))
        nodes.append(helper.make_node("Gather", [f"{name}.grown", "origin"], [f"{name}.next"], axis=0))
        outputs.append(
            helper.make_tensor_value_info(f"{name}.next", TensorProto.FLOAT, ["rows", heads, "next", depth])
        )
    graph = helper.make_graph(nodes, "kiln_cache_advance", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _advance(feeds: dict[str, np.ndarray], device: str) -> Any:
    ort = ort_module()
    caches = {k: v for k, v in feeds.items() if k.startswith("self_")}
    session = ort.InferenceSession(
        advance_graph({k: v.shape for k, v in caches.items()}),
        session_options(),
        providers=providers_for(device),
    )
    binding = session.io_binding()
    held = []
    rows = next(iter(caches.values())).shape[0]
    for name, value in caches.items():
        entry = np.ascontiguousarray(value[:, :, :1])
        for key, array in ((name, value), (f"{name}.entry", entry)):
            held.append(ort.OrtValue.ortvalue_from_numpy(array, device, 0))
            binding.bind_ortvalue_input(key, held[-1])
        binding.bind_output(f"{name}.next", device, 0)
    origin = np.arange(rows, dtype=np.int64)[::-1].copy()

    def call() -> None:
        binding.bind_cpu_input("origin", origin)
        session.run_with_iobinding(binding)

    call.held = held
    return call


def _growing(session: Any, feeds: dict[str, np.ndarray], past: int) -> Any:
    wider = {}
    for extra in range(GROWING):
        step = {}
        for name, value in feeds.items():
            if name.startswith("self_"):
                value = np.concatenate([value] + [value[:, :, :1]] * extra, axis=2)
            elif name == "cache_mask":
                value = np.ones((value.shape[0], past + extra), dtype=value.dtype)
            step[name] = value
        wider[extra] = step
    count = [0]

    def call() -> None:
        session.run(None, wider[count[0] % GROWING])
        count[0] += 1

    return call


def static_model(path: Path, sizes: dict[str, int]) -> bytes:
    """The model with every symbolic input dimension fixed (``sizes`` by name), its inferred shapes
    dropped: ONNX Runtime then folds the shape arithmetic, as a CUDA graph needs."""
    import onnx

    model = onnx.load(str(path))
    for value in model.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_value = sizes[dim.dim_param]
    for value in model.graph.output:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in sizes:
                dim.dim_value = sizes[dim.dim_param]
    del model.graph.value_info[:]
    return model.SerializeToString()


def _graph(path: Path, feeds: dict[str, np.ndarray], rows: int, past: int, src: int) -> Any:
    ort = ort_module()
    sizes = {"batch": rows, "past_len": past, "src_len": src, "sentences": max(1, rows // 4)}
    options = session_options()
    session = ort.InferenceSession(
        static_model(path, sizes), options, providers=providers_for("cuda", graph=True)
    )
    binding = session.io_binding()
    held = []
    for name, value in feeds.items():
        held.append(ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
        binding.bind_ortvalue_input(name, held[-1])
    for meta in session.get_outputs():
        shape = [d if isinstance(d, int) else sizes[d] for d in meta.shape]
        held.append(ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, "cuda", 0))
        binding.bind_ortvalue_output(meta.name, held[-1])
    log_probs = held[len(feeds)]

    def call() -> None:
        session.run_with_iobinding(binding)
        log_probs.numpy()

    call.held = held
    return call


def profile(session_factory: Any, call_factory: Any, repeats: int) -> dict[str, Any]:
    """ONNX Runtime's profile of ``repeats`` calls: nodes per provider, kernel time against the runs."""
    with tempfile.TemporaryDirectory() as tmp:
        session = session_factory(str(Path(tmp) / "probe"))
        call = call_factory(session)
        for _ in range(repeats):
            call()
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    runs = [e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    kernels = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    per_run = len(kernels) / max(1, len(runs))
    providers = Counter(e.get("args", {}).get("provider", "?") for e in kernels)
    by_op = Counter()
    for e in kernels:
        by_op[e.get("args", {}).get("op_name", "?")] += e["dur"]
    total = sum(runs) or 1
    return {
        "runs": len(runs),
        "run_ms": round(statistics.median(runs) / 1e3, 4) if runs else None,
        "nodes_per_run": round(per_run, 1),
        "nodes_by_provider": {k: round(v / max(1, len(runs)), 1) for k, v in providers.items()},
        "kernel_share": round(sum(e["dur"] for e in kernels) / total, 3),
        "top_ops_ms_per_run": {op: round(us / max(1, len(runs)) / 1e3, 4) for op, us in by_op.most_common(8)},
    }


def probe(
    path: Path, device: str, rows: list[int], pasts: list[int], src: int, repeats: int, with_profile: bool
) -> dict[str, Any]:
    """Each variant's median ms at each ``rows`` x ``pasts`` shape, a JSON line printed as each shape is
    measured; with ``with_profile``, ONNX Runtime's profile at the middle shape too."""
    ort = ort_module()
    if device == "cuda":
        load_cuda_libraries(ort)
        if CUDA not in ort.get_available_providers():
            raise SystemExit(f"no CUDA provider in this onnxruntime ({ort.get_available_providers()})")
    session = ort.InferenceSession(str(path), session_options(), providers=providers_for(device))
    result: dict[str, Any] = {
        "model": str(path),
        "device": device,
        "providers": session.get_providers(),
        "onnxruntime": ort.__version__,
        "repeats": repeats,
        "shapes": [],
    }
    for r in rows:
        for past in pasts:
            row = _shape_row(session, path, device, r, past, src, repeats)
            print(json.dumps(row), flush=True)
            result["shapes"].append(row)
    if with_profile:
        r, past = rows[len(rows) // 2], pasts[len(pasts) // 2]
        result["profile"] = _profiles(session, path, device, r, past, src, repeats)
        print(json.dumps(result["profile"]), flush=True)
    return result


def _shape_row(
    session: Any, path: Path, device: str, rows: int, past: int, src: int, repeats: int
) -> dict[str, Any]:
    """One shape's row: each variant's median ms, or why this provider refused it."""
    feeds = feeds_for(session, rows, past, src)
    row: dict[str, Any] = {"rows": rows, "past": past, "src": src}
    for name, make in _variants(session, path, feeds, device, rows, past, src).items():
        try:
            row[name] = _median_ms(make(), repeats)
        except Exception as exc:  # noqa: BLE001 - reported: which variant this provider refuses
            row[name] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
    return row


def _variants(
    session: Any, path: Path, feeds: dict[str, np.ndarray], device: str, rows: int, past: int, src: int
) -> dict[str, Callable[[], Any]]:
    """Each variant's maker of its call, by name (the graph on CUDA only)."""
    variants = {
        "numpy": partial(partial, session.run, None, feeds),
        "resident": partial(_resident, session, feeds, device, small_in=False),
        "resident_small_in": partial(_resident, session, feeds, device, small_in=True),
        "advance": partial(_advance, feeds, device),
        "numpy_growing": partial(_growing, session, feeds, past),
    }
    if device == "cuda":
        variants["graph"] = partial(_graph, path, feeds, rows, past, src)
    return variants


def _profiles(
    session: Any, path: Path, device: str, rows: int, past: int, src: int, repeats: int
) -> dict[str, Any]:
    """ONNX Runtime's profile of the ``numpy`` and ``resident`` variants at one shape."""
    ort = ort_module()
    feeds = feeds_for(session, rows, past, src)

    def make(prefix: str) -> Any:
        return ort.InferenceSession(str(path), session_options(prefix), providers=providers_for(device))

    return {
        "rows": rows,
        "past": past,
        "numpy": profile(make, lambda s: lambda: s.run(None, feeds), repeats),
        "resident": profile(make, lambda s: _resident(s, feeds, device, small_in=True), repeats),
    }
