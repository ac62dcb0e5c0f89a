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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import classify_identity, load
from kiln.processes import running
from serving.triton.server import free_port

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
    results: dict[str, Any] = {"closed": [], "open": [], "batch_histogram": {}, "errors": {}}

    def bench(target: Target, protocols=("http", "grpc")) -> None:
        progress(f"server {target.name}: concurrency {list(concurrencies)}")
        results["closed"].extend(
            asyncio.run(_run_target(target, images, concurrencies, duration_s, protocols))
        )

    http, grpc_port = free_port(), free_port()
    gateway_url = f"http://127.0.0.1:{http}"
    with running(
        gateway_cmd(repository, http, grpc_port, threads, workers=workers),
        f"{gateway_url}/v2/health/ready",
        log_path=workdir / "gateway.log",
    ):
        target = Target("gateway", gateway_url, f"127.0.0.1:{grpc_port}", model)
        bench(target)
        best = max(
            (r for r in results["closed"] if r["target"] == "gateway"), key=lambda r: r["throughput_rps"]
        )
        rate = best["throughput_rps"] / 2
        progress(f"gateway open loop over {best['protocol']} at half of its peak ({rate:.0f} req/s)")
        results["open"].append(asyncio.run(_open_loop(target, images, best["protocol"], rate, duration_s)))
        results["batch_histogram"] = batch_histogram(f"{gateway_url}/metrics", model)
        progress("gateway answers against ONNX Runtime called directly (alone and at c=64)")
        try:
            results["identity"] = classify_identity.check(
                f"127.0.0.1:{grpc_port}", repository, model, meta_dims
            )
        except Exception as exc:  # noqa: BLE001 - reported in the results, the rest still counts
            results["errors"]["identity"] = str(exc)

    try:
        from serving.triton import TritonServer, find_triton

        if find_triton() is None:
            raise RuntimeError("the tritonserver binary from nvidia-pytriton is not installed")
        with TritonServer(repository, workdir / "triton", threads=threads) as triton:
            bench(Target("triton", f"http://{triton.http_url}", triton.grpc_url, model))
            http2, grpc2 = free_port(), free_port()
            url2 = f"http://127.0.0.1:{http2}"
            cmd = gateway_cmd(repository, http2, grpc2, threads, triton_url=triton.grpc_url)
            with running(cmd, f"{url2}/v2/health/ready", log_path=workdir / "gateway-triton.log"):
                bench(Target("gateway->triton", url2, f"127.0.0.1:{grpc2}", model))
    except Exception as exc:  # noqa: BLE001 - Triton missing or failing is reported, not fatal
        results["errors"]["triton"] = str(exc)
        progress(f"triton skipped: {exc}")

    port = free_port()
    naive_cmd = [
        sys.executable,
        "-m",
        "bench.naive",
        str(checkpoint),
        "--port",
        str(port),
        "--threads",
        str(threads),
    ]
    with running(naive_cmd, f"http://127.0.0.1:{port}/ready", log_path=workdir / "naive.log"):
        bench(Target("naive", f"http://127.0.0.1:{port}", None, model), protocols=("http",))
    return results


def _input_dims(repository: Path, model: str) -> tuple[int, ...]:
    import json

    meta = json.loads((repository / model / "kiln.json").read_text())
    return tuple(int(d) for d in meta["inputs"][0]["dims"][1:])
