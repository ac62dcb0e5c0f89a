"""Where a translator's decoder step spends its time on an execution provider, in the variants a GPU
decode path could take: what to build next for translation on a GPU, read off one run.

    python -m bench.gpu_decode_probe REPOSITORY/NAME_decoder/1/model.onnx [--device cuda|cpu]
        [--rows 8,32,128] [--past 8,24] [--src 16] [--repeats 100] [--output probe.json]

For each rows x past shape (random feeds by each input's role: tokens, positions, caches, masks, the
encoder store of ``rows / 4`` sentences and each row's place in it), medians of ``--repeats`` calls, ms:

- ``numpy``: ``session.run`` on numpy feeds, outputs back as numpy (what the decoding engine does
  today: every cache and the encoder store cross to the device at every step, the entries come back);
- ``resident``: every input already on the device (IO binding of OrtValues), the entries left there,
  only ``log_probs`` copied back: the step with a device-resident cache, before its upkeep;
- ``resident_small_in``: the same with the per-step small inputs (tokens, positions, cache mask, row
  places) copied in from numpy at each call, as a device-resident engine would;
- ``advance``: the upkeep such an engine adds, one generated graph (each cache concatenated with its
  entries and gathered by beam origin) on the device;
- ``numpy_growing``: ``numpy`` with the cache one column longer at each call (``past`` .. ``past`` +
  15, cycling), as real steps are: what a new shape costs the provider;
- ``graph``: the decoder with every dimension fixed to this shape, its inputs and outputs bound on the
  device, replayed as a CUDA graph (CUDA only; the reason it could not be captured otherwise).

``--profile`` adds ONNX Runtime's own profile of the ``numpy`` and ``resident`` variants at the middle
shape: nodes per provider and kernel time against the whole run.

    python -m bench.gpu_decode_probe --translate REPOSITORY --checkpoints CHECKPOINTS [--device cuda]
        [--translator transformer] [--sentences 512] [--batches 32,128]

decodes the checkpoint's held-out test sentences (beam 4) in batches of each size through the decode
engine three ways on the provider: the host batch (today's path, every step's cache crossing to the
device), the device-resident batch (:mod:`serving.decoding.resident`) on plain sessions, and the same
replayed as CUDA graphs; sentences/s, target tokens/s and agreement with the host batch's tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from serving.execution.placement import CPU, CUDA, ONNX_DTYPES, load_cuda_libraries

GROWING = 16  # cache widths numpy_growing cycles through


def _ort() -> Any:
    import onnxruntime as ort

    return ort


def _providers(device: str, graph: bool = False) -> list[Any]:
    if device == "cuda":
        return [(CUDA, {"enable_cuda_graph": "1"} if graph else {}), CPU]
    return [CPU]


def _options(profile_prefix: str | None = None) -> Any:
    options = _ort().SessionOptions()
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
    ort = _ort()
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
    ort = _ort()
    caches = {k: v for k, v in feeds.items() if k.startswith("self_")}
    session = ort.InferenceSession(
        advance_graph({k: v.shape for k, v in caches.items()}), _options(), providers=_providers(device)
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
    ort = _ort()
    sizes = {"batch": rows, "past_len": past, "src_len": src, "sentences": max(1, rows // 4)}
    options = _options()
    session = ort.InferenceSession(
        static_model(path, sizes), options, providers=_providers("cuda", graph=True)
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
        events = json.loads(Path(session.end_profiling()).read_text())
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
    ort = _ort()
    if device == "cuda":
        load_cuda_libraries(ort)
        if CUDA not in ort.get_available_providers():
            raise SystemExit(f"no CUDA provider in this onnxruntime ({ort.get_available_providers()})")
    session = ort.InferenceSession(str(path), _options(), providers=_providers(device))
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
            feeds = feeds_for(session, r, past, src)
            row: dict[str, Any] = {"rows": r, "past": past, "src": src}
            variants = {
                "numpy": partial(partial, session.run, None, feeds),
                "resident": partial(_resident, session, feeds, device, small_in=False),
                "resident_small_in": partial(_resident, session, feeds, device, small_in=True),
                "advance": partial(_advance, feeds, device),
                "numpy_growing": partial(_growing, session, feeds, past),
            }
            if device == "cuda":
                variants["graph"] = partial(_graph, path, feeds, r, past, src)
            for name, make in variants.items():
                try:
                    row[name] = _median_ms(make(), repeats)
                except Exception as exc:  # noqa: BLE001 - reported: which variant this provider refuses
                    row[name] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
            print(json.dumps(row), flush=True)
            result["shapes"].append(row)
    if with_profile:
        r, past = rows[len(rows) // 2], pasts[len(pasts) // 2]
        feeds = feeds_for(session, r, past, src)

        def make(prefix: str) -> Any:
            return ort.InferenceSession(str(path), _options(prefix), providers=_providers(device))

        result["profile"] = {
            "rows": r,
            "past": past,
            "numpy": profile(make, lambda s: lambda: s.run(None, feeds), repeats),
            "resident": profile(make, lambda s: _resident(s, feeds, device, small_in=True), repeats),
        }
        print(json.dumps(result["profile"]), flush=True)
    return result


def translate(
    repository: Path, checkpoints: Path, translator: str, device: str, sentences: int, batches: list[int]
) -> dict[str, Any]:
    """The decode engine's three ways over the same held-out sentences (see the module's doc)."""
    from bench.translation_rows import Workload
    from serving.decoding.offline import translate_in_batches
    from serving.decoding.options import DecodingOptions, config_for
    from serving.decoding.translator import translator_from_entry
    from serving.execution.repository import Repository
    from serving.execution.runner import session_runner

    ort = _ort()
    if device == "cuda":
        load_cuda_libraries(ort)
    entry = Repository(repository).get(translator)
    block = entry.kiln["translator"]

    def runner(part: str) -> Any:
        path = repository / block[part] / "1" / "model.onnx"
        run = session_runner(ort.InferenceSession(str(path), _options(), providers=_providers(device)))
        run.model_file = path
        return run

    encoder, decoder = runner("encoder"), runner("decoder")
    engine = translator_from_entry(entry.path, entry.kiln, encoder, decoder)
    work = Workload.load(checkpoints, translator, sentences)
    ids = [row for i in range(0, len(work.texts), 64) for row in engine.source_ids(work.texts[i : i + 64])]
    config = config_for(DecodingOptions(beam_size=4), eos_id=engine.spec.eos_id, bos_id=engine.spec.bos_id)
    ways = {
        "host": None,
        "resident": {"device": device, "cuda_graphs": False, "providers": _providers(device)},
        "resident_graphs": {"device": device, "cuda_graphs": True, "providers": _providers(device)},
    }
    if device != "cuda":
        del ways["resident_graphs"]
    result: dict[str, Any] = {"sentences": len(ids), "device": device, "rows": []}
    for size in batches:
        host_tokens = None
        for way, wanted in ways.items():
            run = runner("decoder")
            run.resident = wanted
            try:
                translate_in_batches(
                    encoder, run, engine.spec, ids[:size], config, size
                )  # warm: layouts made
                start = time.perf_counter()
                hyps = translate_in_batches(encoder, run, engine.spec, ids, config, size)
                seconds = time.perf_counter() - start
            except Exception as exc:  # noqa: BLE001 - reported: which way failed here
                row = {"batch": size, "way": way, "failed": f"{type(exc).__name__}: {str(exc)[:300]}"}
                print(json.dumps(row), flush=True)
                result["rows"].append(row)
                continue
            tokens = [h[0].tokens for h in hyps]
            host_tokens = host_tokens or tokens
            row = {
                "batch": size,
                "way": way,
                "sentences_per_s": round(len(ids) / seconds, 1),
                "tokens_per_s": round(sum(len(t) for t in tokens) / seconds, 1),
                "same_as_host": round(
                    100.0 * sum(a == b for a, b in zip(tokens, host_tokens, strict=True)) / len(ids), 2
                ),
                "layouts": len(getattr(getattr(run, "resident_decoder", None), "layouts", {})),
            }
            print(json.dumps(row), flush=True)
            result["rows"].append(row)
    return result


def gateway(
    repository: Path,
    checkpoints: Path,
    translator: str,
    sentences: int,
    workers: list[int],
    concurrency: list[int],
) -> list[dict[str, Any]]:
    """The gateway serving ``repository`` (its own devices), ``workers`` processes, each held-out
    sentence its own request at each ``concurrency`` (beam 4), with the device-resident decoder
    (``KILN_RESIDENT_DECODER=1``) and without (``0``, the default): target tokens/s after a warm pass,
    and the gateway's CPU a sentence by thread (``bench.frontend_cost.tree_cpu``: event loops, decode
    threads, the rest) with the decode threads' busy share of the run. A decode thread near 100 % busy
    is bound by its own Python and calls; well below, it waits (on the device, or for requests: then
    a higher concurrency gains)."""
    import os

    from bench.frontend_cost import tree_cpu
    from bench.servers import gateway_cmd
    from bench.translation_gateway import _gateway_run, run_client, steady_rounds
    from bench.translation_rows import Workload
    from kiln.processes import running
    from serving.triton.server import free_port

    work = Workload.load(checkpoints, translator, sentences)
    rows = []
    for count in workers:
        for mode in ("1", "0"):
            http, grpc = free_port(), free_port()
            url = f"http://127.0.0.1:{http}"
            os.environ["KILN_RESIDENT_DECODER"] = mode
            try:
                log_path = Path(tempfile.gettempdir()) / f"kiln-probe-gateway-{count}-{mode}.log"
                with running(
                    gateway_cmd(repository, http, grpc, 1, workers=count),
                    f"{url}/v2/health/ready",
                    timeout_s=300,
                    log_path=log_path,
                ) as process:
                    for clients in concurrency:
                        row: dict[str, Any] = {"workers": count, "resident": mode, "concurrency": clients}
                        try:
                            warm = work.texts[: 2 * clients]
                            run_client(_gateway_run(url, translator, warm, 4, clients))
                            rounds = steady_rounds(len(work.texts), clients)
                            before = tree_cpu(process.pid)
                            hyps, seconds, _ = run_client(
                                _gateway_run(url, translator, work.texts, 4, clients, rounds)
                            )
                            spent = {k: v - before[k] for k, v in tree_cpu(process.pid).items()}
                            n = len(work.texts) * rounds
                            row["tokens_per_s"] = round(work.count(hyps) * rounds / seconds, 1)
                            row["sentences_per_s"] = round(n / seconds, 1)
                            row["cpu_ms_a_sentence"] = {k: round(v * 1e3 / n, 3) for k, v in spent.items()}
                            row["decode_busy"] = round(spent["decode"] / (seconds * count), 3)
                            row["hyps"] = hyps
                        except Exception as exc:  # noqa: BLE001 - reported
                            row["failed"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                        rows.append(row)
            except Exception as exc:  # noqa: BLE001 - reported
                rows.append(
                    {"workers": count, "resident": mode, "failed": f"{type(exc).__name__}: {str(exc)[:300]}"}
                )
            finally:
                os.environ.pop("KILN_RESIDENT_DECODER", None)
    base = next((r["hyps"] for r in rows if "hyps" in r), None)
    for row in rows:
        if "hyps" in row:
            row["same_as_first"] = round(
                100.0 * sum(a == b for a, b in zip(row.pop("hyps"), base, strict=True)) / len(base), 2
            )
        print(json.dumps(row), flush=True)
    return rows


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_decode_probe", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("decoder", type=Path, nargs="?", help="a translator's decoder entry's model.onnx")
    parser.add_argument("--translate", type=Path, metavar="REPOSITORY", help="decode real sentences instead")
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    parser.add_argument("--translator", default="transformer")
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--batches", type=_ints, default=[32, 128])
    parser.add_argument(
        "--gateway-workers", type=_ints, default=[], help="with --translate: the gateway too, these processes"
    )
    parser.add_argument(
        "--gateway-concurrency",
        type=_ints,
        default=[32, 256],
        help="the gateway's clients (each a run; more than 32 tells a decoder waiting on the device from one "
        "bound by its thread)",
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--rows", type=_ints, default=[8, 32, 128])
    parser.add_argument("--past", type=_ints, default=[8, 24])
    parser.add_argument("--src", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument(
        "--profile", action="store_true", help="add ONNX Runtime's profile at the middle shape"
    )
    parser.add_argument("--output", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if args.translate is not None:
        result = translate(
            args.translate, args.checkpoints, args.translator, args.device, args.sentences, args.batches
        )
        if args.gateway_workers:
            result["gateway"] = gateway(
                args.translate,
                args.checkpoints,
                args.translator,
                args.sentences,
                args.gateway_workers,
                args.gateway_concurrency,
            )
        if args.output:
            args.output.write_text(json.dumps(result, indent=2))
        return 0
    if args.decoder is None or not args.decoder.is_file():
        parser.error(f"{args.decoder}: no such file (a decoder entry's model.onnx)")
    result = probe(args.decoder, args.device, args.rows, args.past, args.src, args.repeats, args.profile)
    if args.output:
        args.output.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
