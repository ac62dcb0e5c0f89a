"""`make bench PROFILE=gpu`, its serving half: the same gateway on the GPU and on this machine's CPU.

The same checkpoints are served from two repositories: the GPU one (``export --device gpu``: the CUDA
provider, one session per bucket size) and a CPU one (``export --device cpu``), by the same gateway
command at each layout (gateway processes). Side by side:

- classify under closed-loop KServe v2 gRPC load, each answer checked against ONNX Runtime on the CPU;
- ONNX Runtime CUDA called directly on the batches the GPU gateway ran: the same bucket shapes in the
  same proportions, numpy in and out (issue 11: the gateway on the GPU ≥ 0.5x of that;
  :mod:`bench.gpu_direct`);
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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import classify_identity, load, report
from bench.gpu_direct import add_direct
from bench.scrape import batch_mix, mix_delta, step_means
from bench.servers import _input_dims, gateway_cmd
from bench.stats import ratio, summarize
from kiln.processes import end_with_parent, run_child, running
from serving.execution.cpus import usable_cpus
from serving.triton.ports import free_port

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
    # initializer: a killed bench's clients end with it, not waiting for their next call for ever
    with concurrent.futures.ProcessPoolExecutor(
        processes, mp_context=ctx, initializer=end_with_parent
    ) as pool:
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


@dataclass(frozen=True)
class Layout:
    """One gateway under test: which repository's device, how many processes, where it listens."""

    device: str
    workers: int
    url: str
    grpc_url: str

    @property
    def name(self) -> str:
        return f"{self.device}, {self.workers} worker{'s' if self.workers > 1 else ''}"

    def metrics(self) -> str:
        """The ``/metrics`` page (every ``--workers`` process counted, whichever one answers)."""
        import httpx

        return httpx.get(f"{self.url}/metrics", timeout=10).text


def classify_rows(
    layout: Layout, model: str, images: np.ndarray, profile: dict[str, Any]
) -> list[dict[str, Any]]:
    """Closed-loop gRPC classify at each concurrency, each row with the batches the gateway ran for it."""
    rows = []
    for c in profile["serving_concurrency"]:
        before = batch_mix(layout.metrics(), model)
        row = closed_loop_processes(
            layout.grpc_url, model, images, c, profile["serving_duration_s"], profile["client_processes"]
        )
        mix = mix_delta(before, batch_mix(layout.metrics(), model))  # every worker's batches
        rows.append({"device": layout.device, "workers": layout.workers, **row, "mix": mix})
    return rows


def translate_row(layout: Layout, work: Any, concurrency: int) -> dict[str, Any]:
    """Each held-out sentence its own request at ``concurrency``, beam 4, with the mean decoder step."""
    from bench.translation_gateway import _median_run

    # a warm pass first: each side's first steps load what they load lazily (the GPU decoder's layouts);
    # its steps are left out of the row's mean step (the scrape before the measured run)
    # every request asks for the workload's max_length, as the CPU bench's rows do: a fixed 64 was
    # refused (422) by a translator trained with fewer positions (``--model-arg max_positions=32``)
    most = work.max_length
    _median_run(
        layout.url, work.model, work.texts[: 2 * concurrency], 4, concurrency, repeats=1, max_length=most
    )
    warm = layout.metrics()
    # seconds: one pass's; served: every pass's answers (hyps marks a text whose passes disagreed)
    hyps, seconds, lat, served = _median_run(
        layout.url, work.model, work.texts, 4, concurrency, repeats=1, max_length=most
    )
    return {
        "device": layout.device,
        "workers": layout.workers,
        "concurrency": concurrency,
        "sentences_per_s": len(work.texts) / seconds,
        "tokens_per_s": work.count(served) * len(work.texts) / len(served) / seconds,
        **{k: v for k, v in summarize(lat).as_dict().items() if k in ("p50_ms", "p99_ms")},
        "hyps": hyps,
        **step_means(layout.metrics(), work.model, since=warm),
    }


def gpu_config_problem(repository: Path, model: str) -> str | None:
    """Why ``repository``'s ``model`` would not measure the GPU (it is not a KIND_GPU config), or None."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    path = repository / model / "config.pbtxt"
    if not path.is_file():
        return f"{repository / model} is not an exported entry: run `make export DEVICE=gpu` first"
    config = text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    kinds = {model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group}
    if "KIND_GPU" not in kinds:
        return (
            f"{path} asks for {', '.join(sorted(kinds)) or 'no instance kind'}, not KIND_GPU: the gateway "
            "on the GPU needs `make export DEVICE=gpu` (python -m export --device gpu)"
        )
    return None


def cpu_repository_for(gpu_repository: Path) -> Path:
    """Where the CPU side is exported when ``--cpu-repository`` is not given: beside the GPU one."""
    return gpu_repository.with_name(f"{gpu_repository.name}-cpu")


def export_cpu_side(
    checkpoints: Path, models: tuple[str, ...], repository: Path, progress: Callable[[str], None] = log.info
) -> None:
    """The same checkpoints exported for the CPU (fp32) into ``repository``; export itself skips the
    entries that are already up to date."""
    cmd = [sys.executable, "-m", "export", *(str(checkpoints / f"{m}.pt") for m in models)]
    cmd += ["--repository", str(repository), "--precisions", "fp32"]
    progress(f"exporting the CPU side of the comparison into {repository}")
    if run_child(cmd) != 0:  # stopped with the bench, however it ends (and a stop during its fork)
        raise RuntimeError(f"the CPU export failed: {' '.join(cmd)}")


def default_layouts(cores: int) -> tuple[int, ...]:
    """Gateway processes to measure on ``cores`` cores: one, a quarter and half of the cores (the
    other half drives the load and the GPU)."""
    return tuple(sorted({1, max(1, cores // 4), max(1, cores // 2)}))


def run(
    gpu_repository: Path,
    cpu_repository: Path | None,
    checkpoints: Path,
    profile: dict[str, Any],
    out: Path,
    *,
    classifier: str,
    translator: str,
    threads: int,
    devices: tuple[str, ...] = DEVICES,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Every layout of the gateway on the repository of each of ``devices`` (the GPU one, the CPU one or
    both), then the direct and reference baselines."""
    sides = _sides(gpu_repository, cpu_repository, devices)
    from bench.translation_rows import Workload

    dims = _input_dims(gpu_repository, classifier)
    images = np.random.default_rng(0).integers(0, 256, size=(1, *dims), dtype=np.uint8)
    work = Workload.load(checkpoints, translator, profile["sentences"])
    sweep = _Sweep(classifier, dims, images, work, profile, threads, out, progress)
    for device in devices:
        for workers in profile["serving_workers"] or default_layouts(usable_cpus()):
            _measure_layout(sweep, device, sides[device], workers)
    results = sweep.results
    progress("ONNX Runtime CUDA directly on the GPU gateway's batches")
    add_direct(results["classify"], _newest_model(gpu_repository, classifier), results["errors"])
    progress("PyTorch reference translations (beam 4, KV cache)")
    _add_agreement(results["translate"], work, threads)
    results["summary"] = summary(results)
    results["markdown"] = markdown(results)
    return results


def _sides(
    gpu_repository: Path, cpu_repository: Path | None, devices: tuple[str, ...]
) -> dict[str, Path | None]:
    """Each device's repository; refuses a device asked for without one before anything runs."""
    sides = {"gpu": gpu_repository, "cpu": cpu_repository}
    missing = [device for device in devices if sides.get(device) is None]
    if missing:
        raise ValueError(f"no repository for the {', '.join(missing)} side of the comparison")
    return sides


@dataclass
class _Sweep:
    """What every gateway layout of one :func:`run` shares: the classifier's images (``dims`` each),
    the translations (a ``bench.translation_rows.Workload``), the profile, where logs go, the results."""

    classifier: str
    dims: tuple[int, ...]
    images: np.ndarray
    work: Any
    profile: dict[str, Any]
    threads: int
    out: Path
    progress: Callable[[str], None]
    results: dict[str, Any] = field(
        default_factory=lambda: {"classify": [], "translate": [], "identity": {}, "errors": {}}
    )


def _measure_layout(sweep: _Sweep, device: str, repository: Path, workers: int) -> None:
    """One gateway layout started and measured: classify at each concurrency, its answers checked, and
    translate; a layout failing is reported in the results' errors, the others still run."""
    results, progress = sweep.results, sweep.progress
    http, grpc_port = free_port(), free_port()
    layout = Layout(device, workers, f"http://127.0.0.1:{http}", f"127.0.0.1:{grpc_port}")
    cmd = gateway_cmd(repository, http, grpc_port, sweep.threads, workers=workers)
    log_path = sweep.out / f"gateway-{device}-{workers}.log"
    progress(f"gateway on the {layout.name}")
    try:
        with running(cmd, f"{layout.url}/v2/health/ready", timeout_s=300, log_path=log_path):
            rows = classify_rows(layout, sweep.classifier, sweep.images, sweep.profile)
            results["classify"] += rows
            for r in rows:
                progress(f"  classify c={r['concurrency']}: {r['throughput_rps']:.0f} req/s")
            identity = classify_identity.check(layout.grpc_url, repository, sweep.classifier, sweep.dims)
            results["identity"][layout.name] = identity
            results["translate"].append(
                translate_row(layout, sweep.work, sweep.profile["translate_concurrency"])
            )
            progress(f"  translate: {results['translate'][-1]['tokens_per_s']:.0f} tokens/s")
    except Exception as exc:  # noqa: BLE001 - one layout failing is reported, the others still run
        results["errors"][layout.name] = f"{type(exc).__name__}: {exc}"
        progress(f"gateway on the {layout.name} failed: {exc}")


def _newest_model(repository: Path, model: str) -> Path:
    """``model``'s ONNX file in ``repository``, of the version a call naming none reaches (the newest its
    version_policy serves, as the gateway picks it: a newer version may be staged, not served)."""
    from serving.execution.version_policy import served_version

    return Path(served_version(str(repository / model))) / "model.onnx"


def _add_agreement(rows: list[dict[str, Any]], work: Any, threads: int) -> None:
    """Each translate row's share of sentences identical to the PyTorch reference's (beam 4, KV cache)."""
    from bench.translation_engines import pytorch_rows

    reference = pytorch_rows(
        work.ckpt,
        work.texts,
        work.refs,
        [4],
        threads,
        work.count,
        caches=(True,),
        timed=False,
        max_length=work.max_length,  # the gateway's rows' (translate_row)
    )[0]["hyps"]
    for row in rows:
        same = sum(h == r for h, r in zip(row["hyps"], reference, strict=True))
        row["same_as_reference"] = 100.0 * same / len(reference)


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
        # each measured value printed apart from its goal, as the Targets table does (2.996 as "2.996")
        report.targets_table(results["summary"]) + "\n",
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
