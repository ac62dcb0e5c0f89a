"""Classifier servers side by side under the same load: the gateway (embedded ONNX Runtime), the gateway
forwarding to Triton, Triton directly (python flavour), and the naive FastAPI + PyTorch baseline.

Servers run as subprocesses on 127.0.0.1 free ports and are always stopped. Clients are async and
bounded in time; every request's answer status is counted.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import classify_identity, load
from kiln.processes import running
from serving.triton.ports import free_port

log = logging.getLogger(__name__)

# gRPC connections of one closed- or open-loop client, at most one per request in flight. A channel
# is one HTTP/2 connection and a gateway's SO_REUSEPORT workers each take whole connections, so over
# one channel the load reached one worker only, where client fleets (and perf_analyzer: ~11
# connections at c=64) reach them all. With 8, 2 workers hold 4 each; at c=64 this Python client
# read 1 158-1 413 requests/s against 1 253-1 324 over one connection (2 workers, 4 runs each): its
# own CPU is the limit there, and perf_analyzer's rows are the reference for gRPC throughput.
GRPC_CONNECTIONS = 8


@dataclass
class Target:
    name: str  # "gateway", "gateway->triton", "triton", "naive"
    http_url: str | None
    grpc_url: str | None
    model: str
    metrics_url: str | None = None


def gateway_cmd(
    repository: Path,
    http: int,
    grpc: int,
    threads: int,
    triton_url: str | None = None,
    translate: str = "scheduler",
    workers: int = 1,
) -> list[str]:
    """The gateway's command; with ``workers`` > 1 the ONNX Runtime threads are split among them."""
    threads = max(1, threads // workers)
    cmd = [sys.executable, "-m", "serving", "--model-repository", str(repository), "--host", "127.0.0.1"]
    cmd += ["--http-port", str(http), "--grpc-port", str(grpc), "--intra-op-threads", str(threads)]
    cmd += ["--max-queue-size", "4096", "--log-level", "warning"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    if triton_url:
        cmd += ["--backend", "triton", "--triton-url", triton_url, "--triton-translate", translate]
    return cmd


def _http_session(connections: int) -> Any:
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections + 8), timeout=aiohttp.ClientTimeout(total=60)
    )


def grpc_channels(url: str, count: int) -> list[Any]:
    """``count`` grpc.aio channels to ``url``, each over a connection of its own (channels with the
    same target and options otherwise share one through gRPC's global subchannel pool)."""
    import grpc

    options = [("grpc.use_local_subchannel_pool", 1)]
    return [grpc.aio.insecure_channel(url, options=options) for _ in range(max(1, count))]


def _sender(
    target: Target, protocol: str, images: np.ndarray, session: Any, channels: list[Any]
) -> load.Send:
    from tritonclient.grpc import service_pb2_grpc

    if protocol == "grpc":
        stubs = [service_pb2_grpc.GRPCInferenceServiceStub(channel) for channel in channels]
        return load.kserve_grpc_sender(stubs, target.model, images)
    if target.name == "naive":
        return load.naive_http_sender(session, target.http_url, images)
    return load.kserve_http_sender(session, target.http_url, target.model, images)


async def _run_target(
    target: Target, images: np.ndarray, concurrencies, duration_s: float, protocols
) -> list[dict]:
    rows = []
    async with _http_session(max(concurrencies)) as session:
        for protocol in protocols:
            if protocol == "grpc" and not target.grpc_url:
                continue
            for c in concurrencies:
                channels = (
                    grpc_channels(target.grpc_url, min(c, GRPC_CONNECTIONS)) if protocol == "grpc" else []
                )
                try:
                    send = _sender(target, protocol, images, session, channels)
                    result = await load.closed_loop(send, c, duration_s)
                finally:
                    for channel in channels:
                        await channel.close()
                rows.append({"target": target.name, "protocol": protocol, **result.as_dict()})
                log.info("%s %s c=%d: %.0f req/s", target.name, protocol, c, rows[-1]["throughput_rps"])
    return rows


async def _open_loop(
    target: Target, images: np.ndarray, protocol: str, rate: float, duration_s: float
) -> dict:
    async with _http_session(512) as session:
        channels = grpc_channels(target.grpc_url, GRPC_CONNECTIONS) if protocol == "grpc" else []
        try:
            result = await load.open_loop(
                _sender(target, protocol, images, session, channels), rate, duration_s
            )
        finally:
            for channel in channels:
                await channel.close()
    return {"target": target.name, "protocol": protocol, **result.as_dict()}


def batch_histogram(metrics_url: str, model: str) -> dict[str, float]:
    """Cumulative batch-size buckets for ``model`` scraped from the gateway's Prometheus endpoint."""
    import httpx

    text = httpx.get(metrics_url, timeout=10).text
    buckets = {}
    pattern = re.compile(r"^kiln_batch_size_bucket\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")
    for line in text.splitlines():
        m = pattern.match(line)
        if m and f'model="{model}"' in m["labels"]:
            le = re.search(r'le="([^"]+)"', m["labels"])[1]
            buckets[le] = float(m["value"])
    return buckets


def run_servers(
    repository: Path,
    checkpoint: Path,
    model: str,
    workdir: Path,
    *,
    concurrencies,
    duration_s: float,
    threads: int,
    workers: int = 1,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Every server target under the same closed-loop load, plus an open-loop run at half peak."""
    meta_dims = _input_dims(repository, model)
    images = np.random.default_rng(0).integers(0, 256, size=(1, *meta_dims), dtype=np.uint8)
    workdir.mkdir(parents=True, exist_ok=True)
    run = _Run(repository, model, workdir, images, concurrencies, duration_s, threads, progress)
    run.results["gateway_workers"] = workers  # the `gateway` rows; `gateway->triton`: one
    _gateway_targets(run, workers, meta_dims)
    _triton_targets(run)
    try:
        _naive_target(run, checkpoint)
    except Exception as exc:  # noqa: BLE001 - the baseline failing is reported; the servers above count
        run.results["errors"]["naive"] = str(exc)
        run.progress(f"naive baseline skipped: {exc}")
    return run.results


@dataclass
class _Run:
    """What every target of one :func:`run_servers` shares: the load, where logs go, the results."""

    repository: Path
    model: str
    workdir: Path
    images: np.ndarray
    concurrencies: Any
    duration_s: float
    threads: int
    progress: Callable[[str], None]
    results: dict[str, Any] = field(
        default_factory=lambda: {"closed": [], "open": [], "batch_histogram": {}, "errors": {}}
    )

    def bench(self, target: Target, protocols=("http", "grpc")) -> None:
        """``target`` under closed-loop load at every concurrency, over each of ``protocols``."""
        self.progress(f"server {target.name}: concurrency {list(self.concurrencies)}")
        self.results["closed"].extend(
            asyncio.run(_run_target(target, self.images, self.concurrencies, self.duration_s, protocols))
        )


def _gateway_targets(run: _Run, workers: int, meta_dims: tuple[int, ...]) -> None:
    """The gateway: closed loop, open loop at half its peak, its batch sizes and its answers checked."""
    http, grpc_port = free_port(), free_port()
    gateway_url = f"http://127.0.0.1:{http}"
    with running(
        gateway_cmd(run.repository, http, grpc_port, run.threads, workers=workers),
        f"{gateway_url}/v2/health/ready",
        log_path=run.workdir / "gateway.log",
    ):
        target = Target("gateway", gateway_url, f"127.0.0.1:{grpc_port}", run.model)
        run.bench(target)
        _open_loop_at_half_peak(run, target)
        run.results["batch_histogram"] = batch_histogram(f"{gateway_url}/metrics", run.model)
        run.progress("gateway answers against ONNX Runtime called directly (alone and at c=64)")
        try:
            run.results["identity"] = classify_identity.check(
                f"127.0.0.1:{grpc_port}", run.repository, run.model, meta_dims
            )
        except Exception as exc:  # noqa: BLE001 - reported in the results, the rest still counts
            run.results["errors"]["identity"] = str(exc)


def _open_loop_at_half_peak(run: _Run, target: Target) -> None:
    """``target`` in open loop at half its best closed-loop throughput, over that row's protocol; not
    run, and named in the errors, when no closed-loop request of it succeeded (no peak to halve)."""
    best = max(
        (r for r in run.results["closed"] if r["target"] == "gateway"),
        key=lambda r: r["throughput_rps"],
        default=None,
    )
    if best is None or not best["throughput_rps"] > 0:
        run.results["errors"]["open loop"] = "not run: no closed-loop request to the gateway succeeded"
        run.progress("gateway open loop skipped: no closed-loop request to the gateway succeeded")
        return
    rate = best["throughput_rps"] / 2
    run.progress(f"gateway open loop over {best['protocol']} at half of its peak ({rate:.0f} req/s)")
    run.results["open"].append(
        asyncio.run(_open_loop(target, run.images, best["protocol"], rate, run.duration_s))
    )


def _triton_targets(run: _Run) -> None:
    """Triton directly, then the gateway forwarding to it; Triton missing or failing is reported."""
    try:
        from bench.triton_layouts import keep_triton_repository
        from serving.triton import TritonServer, find_triton

        if find_triton() is None:
            raise RuntimeError("the tritonserver binary from nvidia-pytriton is not installed")
        keep = keep_triton_repository()
        with TritonServer(
            run.repository, run.workdir / "triton", threads=run.threads, keep_repository=keep
        ) as triton:
            run.bench(Target("triton", f"http://{triton.http_url}", triton.grpc_url, run.model))
            http2, grpc2 = free_port(), free_port()
            url2 = f"http://127.0.0.1:{http2}"
            cmd = gateway_cmd(run.repository, http2, grpc2, run.threads, triton_url=triton.grpc_url)
            with running(cmd, f"{url2}/v2/health/ready", log_path=run.workdir / "gateway-triton.log"):
                run.bench(Target("gateway->triton", url2, f"127.0.0.1:{grpc2}", run.model))
    except Exception as exc:  # noqa: BLE001 - Triton missing or failing is reported, not fatal
        run.results["errors"]["triton"] = str(exc)
        run.progress(f"triton skipped: {exc}")


def _naive_target(run: _Run, checkpoint: Path) -> None:
    """The naive FastAPI + PyTorch baseline (bench.naive) on ``checkpoint``, over HTTP."""
    port = free_port()
    naive_cmd = [
        sys.executable,
        "-m",
        "bench.naive",
        str(checkpoint),
        "--port",
        str(port),
        "--threads",
        str(run.threads),
    ]
    with running(naive_cmd, f"http://127.0.0.1:{port}/ready", log_path=run.workdir / "naive.log"):
        run.bench(Target("naive", f"http://127.0.0.1:{port}", None, run.model), protocols=("http",))


def _input_dims(repository: Path, model: str) -> tuple[int, ...]:
    import json

    meta = json.loads((repository / model / "kiln.json").read_text(encoding="utf-8"))
    return tuple(int(d) for d in meta["inputs"][0]["dims"][1:])
