"""`make bench PROFILE=gpu`, its serving half: the same gateway on the GPU and on this machine's CPU.

The same checkpoints are served from two repositories: the GPU one (``export --device gpu``: the CUDA
provider, one session per bucket size) and a CPU one (``export --device cpu``), by the same gateway
command at each layout (gateway processes). Side by side:

- classify under closed-loop KServe v2 gRPC load, each answer checked against ONNX Runtime on the CPU;
- ONNX Runtime CUDA called directly on the batches the GPU gateway ran: the same bucket shapes in the
  same proportions, numpy in and out (issue 11: the gateway on the GPU ≥ 0.5x of that);
- translation through the gateway (each sentence its own request, beam 4), every output compared with
  the PyTorch reference and between the two devices.

The load comes from several client processes: one Python process tops out at a few thousand gRPC
requests a second, below what a gateway on a GPU may answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import classify_identity, load, report
from bench.servers import _input_dims, gateway_cmd
from bench.stats import ratio, summarize
from kiln.processes import running
from serving.triton.server import free_port

log = logging.getLogger(__name__)

DEVICES = ("gpu", "cpu")


def _client(
    grpc_url: str, model: str, images: np.ndarray, concurrency: int, start_at: float, duration_s: float
):
    """One client process: ``concurrency`` closed-loop gRPC clients from ``start_at`` (wall clock)."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    async def main() -> load.LoadResult:
        async with grpc.aio.insecure_channel(grpc_url) as channel:
            send = load.kserve_grpc_sender(service_pb2_grpc.GRPCInferenceServiceStub(channel), model, images)
            await send()  # connected before the clock starts
            await asyncio.sleep(max(0.0, start_at - time.time()))
            return await load.closed_loop(send, concurrency, duration_s)

    result = asyncio.run(main())
    return result.ok, result.errors, result.duration_s, result.latencies_s


def closed_loop_processes(
    grpc_url: str, model: str, images: np.ndarray, concurrency: int, duration_s: float, processes: int
) -> dict[str, Any]:
    """``concurrency`` closed-loop clients spread over ``processes`` client processes that start
    together; throughput is the sum of theirs, latencies are pooled."""
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    start_at = time.time() + 2.0 + 0.2 * processes  # every process imported and connected by then
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=ctx) as pool:
        futures = [
            pool.submit(_client, grpc_url, model, images, share, start_at, duration_s) for share in shares
        ]
        parts = [f.result() for f in futures]
    latencies = [lat for part in parts for lat in part[3]]
    return {
        "concurrency": concurrency,
        "client_processes": processes,
        "ok": sum(p[0] for p in parts),
        "errors": sum(p[1] for p in parts),
        "throughput_rps": sum(p[0] / p[2] for p in parts if p[2]),
        **{k: v for k, v in summarize(latencies).as_dict().items() if k in ("p50_ms", "p99_ms")},
    }


_BUCKET = re.compile(r"^kiln_batch_size_(bucket|sum|count)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")


def batch_mix(metrics_text: str, model: str) -> dict[str, Any]:
    """``{"batches": {upper bound: count}, "items": n}``: the executed batches of ``model`` by size
    bucket (from the cumulative Prometheus histogram) and the items they held."""
    cumulative: dict[float, float] = {}
    items = 0.0
    for line in metrics_text.splitlines():
        m = _BUCKET.match(line)
        if not m or f'model="{model}"' not in m["labels"]:
            continue
        if m[1] == "sum":
            items += float(m["value"])
        elif m[1] == "bucket":
            le = float(re.search(r'le="([^"]+)"', m["labels"])[1])
            cumulative[le] = cumulative.get(le, 0.0) + float(m["value"])  # summed over worker processes
    batches, below = {}, 0.0
    for le in sorted(cumulative):
        if cumulative[le] > below and le != float("inf"):
            batches[int(le)] = cumulative[le] - below
        below = max(below, cumulative[le])
    return {"batches": batches, "items": items}


def mix_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What ran between two :func:`batch_mix` readings."""
    batches = {b: n - before["batches"].get(b, 0.0) for b, n in after["batches"].items()}
    return {"batches": {b: n for b, n in batches.items() if n > 0}, "items": after["items"] - before["items"]}


def direct_on_mix(
    model_file: Path, mix: dict[str, Any], parallel: int = 1, budget_s: float = 2.0
) -> dict[str, Any]:
    """ONNX Runtime's CUDA provider called directly on ``mix``'s batches, as the gateway runs them: one
    session per bucket shape, numpy in and out, from ``parallel`` threads with sessions of their own (a
    gateway process each). Each thread runs the bucket shapes in the mix's proportions for ``budget_s``;
    images/s counts the mix's real rows (its items per padded row)."""
    import threading

    from bench.gpu import CUDA_OPTIONS, onnxruntime
    from serving.execution.placement import zero_inputs

    ort = onnxruntime()
    providers = [("CUDAExecutionProvider", CUDA_OPTIONS), "CPUExecutionProvider"]
    sizes = sorted(mix["batches"])
    padded_rows = sum(b * n for b, n in mix["batches"].items())
    fill = mix["items"] / padded_rows if padded_rows else 0.0
    total = sum(mix["batches"].values())
    order = [b for b in sizes for _ in range(max(1, round(64 * mix["batches"][b] / total)))]
    np.random.default_rng(0).shuffle(order)

    def feeds_for(session: Any, size: int) -> dict[str, np.ndarray]:
        feeds = zero_inputs(session, size)
        name = next(iter(feeds))
        feeds[name] = (
            np.random.default_rng(size).integers(0, 256, feeds[name].shape).astype(feeds[name].dtype)
        )
        return feeds

    workers = []
    for _ in range(parallel):
        sessions = {b: ort.InferenceSession(str(model_file), providers=providers) for b in sizes}
        feeds = {b: feeds_for(sessions[b], b) for b in sizes}
        for b in sizes:
            for _ in range(3):  # each shape planned before the clock starts
                sessions[b].run(None, feeds[b])
        workers.append((sessions, feeds))
    rows = [0] * parallel
    stop_at = [0.0]
    barrier = threading.Barrier(parallel + 1)

    def work(i: int) -> None:
        sessions, feeds = workers[i]
        barrier.wait()
        k = i
        while time.perf_counter() < stop_at[0]:
            b = order[k % len(order)]
            sessions[b].run(None, feeds[b])  # ONNX Runtime releases the GIL while it runs
            rows[i] += b
            k += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(parallel)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    stop_at[0] = start + budget_s
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {"parallel": parallel, "fill": round(fill, 3), "throughput_ips": fill * sum(rows) / elapsed}


_HISTOGRAM = re.compile(r"^(?P<name>\w+)_(?P<part>sum|count)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")


def step_means(metrics_text: str, model: str) -> dict[str, float]:
    """The translator's mean decoder step (ms, the whole step: graph and beam bookkeeping) and rows in it."""
    means = histogram_means(metrics_text, model, ("kiln_decoder_step_seconds", "kiln_decoder_rows_per_step"))
    return {
        "step_ms": 1e3 * means["kiln_decoder_step_seconds"],
        "rows_per_step": means["kiln_decoder_rows_per_step"],
    }


def histogram_means(metrics_text: str, model: str, names: tuple[str, ...]) -> dict[str, float]:
    """The mean of each Prometheus histogram in ``names`` for ``model`` (summed over its series)."""
    sums: dict[str, list[float]] = {name: [0.0, 0.0] for name in names}
    for line in metrics_text.splitlines():
        m = _HISTOGRAM.match(line)
        if m and m["name"] in sums and f'model="{model}"' in m["labels"]:
            sums[m["name"]][m["part"] == "count"] += float(m["value"])
    return {name: (total / count if count else float("nan")) for name, (total, count) in sums.items()}


def run(
    gpu_repository: Path,
    cpu_repository: Path,
    checkpoints: Path,
    profile: dict[str, Any],
    out: Path,
    *,
    classifier: str,
    translator: str,
    threads: int,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Every layout of the gateway on both repositories, then the direct and reference baselines."""
    import httpx

    from bench.translation_gateway import _median_run
    from bench.translation_rows import Workload

    dims = _input_dims(gpu_repository, classifier)
    images = np.random.default_rng(0).integers(0, 256, size=(1, *dims), dtype=np.uint8)
    work = Workload.load(checkpoints, translator, profile["sentences"])
    results: dict[str, Any] = {"classify": [], "translate": [], "identity": {}, "errors": {}}
    mixes = {}
    for device, repository in zip(DEVICES, (gpu_repository, cpu_repository), strict=True):
        for workers in profile["serving_workers"]:
            layout = f"{device}, {workers} worker{'s' if workers > 1 else ''}"
            http, grpc_port = free_port(), free_port()
            url, grpc_url = f"http://127.0.0.1:{http}", f"127.0.0.1:{grpc_port}"
            cmd = gateway_cmd(repository, http, grpc_port, threads, workers=workers)
            progress(f"gateway on the {layout}: starting")
            try:
                with running(
                    cmd,
                    f"{url}/v2/health/ready",
                    timeout_s=300,
                    log_path=out / f"gateway-{device}-{workers}.log",
                ):
                    for c in profile["serving_concurrency"]:
                        before = batch_mix(httpx.get(f"{url}/metrics").text, classifier)
                        row = closed_loop_processes(
                            grpc_url,
                            classifier,
                            images,
                            c,
                            profile["serving_duration_s"],
                            profile["client_processes"],
                        )
                        mix = mix_delta(before, batch_mix(httpx.get(f"{url}/metrics").text, classifier))
                        results["classify"].append({"device": device, "workers": workers, **row, "mix": mix})
                        mixes[(device, workers, c)] = mix
                        progress(
                            f"  classify c={c}: {row['throughput_rps']:.0f} req/s, p50 {row['p50_ms']:.2f} ms"
                        )
                    identity = classify_identity.check(grpc_url, repository, classifier, dims)
                    results["identity"][layout] = identity
                    progress(f"  classify answers vs ONNX Runtime CPU: {identity}")
                    c = profile["translate_concurrency"]
                    hyps, seconds, lat = _median_run(url, translator, work.texts, 4, c, repeats=1)
                    results["translate"].append(
                        {
                            "device": device,
                            "workers": workers,
                            "concurrency": c,
                            "sentences_per_s": len(work.texts) / seconds,
                            "tokens_per_s": work.count(hyps) / seconds,
                            **{
                                k: v for k, v in summarize(lat).as_dict().items() if k in ("p50_ms", "p99_ms")
                            },
                            "hyps": hyps,
                            **step_means(httpx.get(f"{url}/metrics").text, translator),
                        }
                    )
                    progress(
                        f"  translate c={c} beam 4: {results['translate'][-1]['tokens_per_s']:.0f} tokens/s"
                    )
            except Exception as exc:  # noqa: BLE001 - one layout failing is reported, the others still run
                results["errors"][layout] = f"{type(exc).__name__}: {exc}"
                progress(f"gateway on the {layout} failed: {exc}")
    progress("ONNX Runtime CUDA directly on the GPU gateway's batches")
    model_file = max(
        (gpu_repository / classifier).glob("[0-9]*/model.onnx"), key=lambda p: int(p.parent.name)
    )
    for (device, workers, c), mix in mixes.items():
        if device == "gpu" and mix["batches"] and c > 1:
            try:
                direct = direct_on_mix(model_file, mix, parallel=workers)
            except Exception as exc:  # noqa: BLE001
                results["errors"][f"direct {workers} {c}"] = str(exc)
                continue
            for row in results["classify"]:
                if (row["device"], row["workers"], row["concurrency"]) == (device, workers, c):
                    row["direct_on_mix_ips"] = direct["throughput_ips"]
                    row["gateway_over_direct"] = ratio(row["throughput_rps"], direct["throughput_ips"])
    progress("PyTorch reference translations (beam 4, KV cache)")
    from bench.translation_engines import pytorch_rows

    reference = pytorch_rows(
        work.ckpt, work.texts, work.refs, [4], threads, work.count, caches=(True,), timed=False
    )
    for row in results["translate"]:
        row["same_as_reference"] = (
            100.0
            * sum(h == r for h, r in zip(row["hyps"], reference[0]["hyps"], strict=True))
            / len(work.texts)
        )
    results["summary"] = summary(results)
    results["markdown"] = markdown(results)
    return results


def _best(rows: list[dict[str, Any]], device: str, key: str, **match: Any) -> float:
    values = [
        r[key]
        for r in rows
        if r["device"] == device and all(r.get(k) == v for k, v in match.items()) and key in r
    ]
    return max(values, default=float("nan"))


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 11's serving targets, each at the best layout of each side."""
    cls, tr = results["classify"], results["translate"]
    gpu64 = _best(cls, "gpu", "throughput_rps", concurrency=64)
    best_gpu64 = max(
        (r for r in cls if r["device"] == "gpu" and r["concurrency"] == 64),
        key=lambda r: r["throughput_rps"],
        default={},
    )
    rows = [
        {
            "target": "classify c=64: gateway GPU / gateway CPU",
            "goal": 10.0,
            "measured": ratio(gpu64, _best(cls, "cpu", "throughput_rps", concurrency=64)),
        },
        {
            "target": "classify c=64: gateway GPU / ORT CUDA direct, same batches and processes",
            "goal": 0.5,
            "measured": best_gpu64.get("gateway_over_direct", float("nan")),
        },
        {
            "target": "translate c=32 beam 4: gateway GPU / gateway CPU",
            "goal": 3.0,
            "measured": ratio(_best(tr, "gpu", "tokens_per_s"), _best(tr, "cpu", "tokens_per_s")),
        },
        {
            "target": "translate: % identical to PyTorch (worst layout)",
            "goal": 100.0,
            "measured": min((r["same_as_reference"] for r in tr), default=float("nan")),
        },
    ]
    for r in rows:
        r["met"] = "–" if r["measured"] != r["measured"] else ("yes" if r["measured"] >= r["goal"] else "no")
    return rows


def markdown(results: dict[str, Any]) -> str:
    cls = [{**r, "layout": f"{r['device']}, {r['workers']} w"} for r in results["classify"]]
    tr = [{**r, "layout": f"{r['device']}, {r['workers']} w"} for r in results["translate"]]
    parts = [
        "## The gateway on the GPU and on the CPU\n",
        report.table(results["summary"], ["target", "goal", "measured", "met"]) + "\n",
        "### Classify (KServe v2 gRPC, closed loop)\n",
        report.table(
            cls,
            [
                "layout",
                "concurrency",
                "client_processes",
                "throughput_rps",
                "p50_ms",
                "p99_ms",
                "errors",
                "direct_on_mix_ips",
                "gateway_over_direct",
            ],
        )
        + "\n",
        "### Translate (REST, one sentence a request, beam 4)\n",
        report.table(
            tr,
            [
                "layout",
                "concurrency",
                "sentences_per_s",
                "tokens_per_s",
                "p50_ms",
                "same_as_reference",
                "step_ms",
                "rows_per_step",
            ],
        )
        + "\n",
    ]
    for layout, identity in results["identity"].items():
        parts.append(f"- classify answers, {layout}: {identity}\n")
    for layout, error in results["errors"].items():
        parts.append(f"- **{layout} failed**: {error}\n")
    return "\n".join(parts)
