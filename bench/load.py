"""Load generators: closed loop (N concurrent clients back to back) and open loop (fixed arrival rate).

Request bodies are encoded once up front (KServe v2 binary tensors over HTTP, a prebuilt
ModelInferRequest over gRPC) so the client spends as little of the shared CPU as possible. Open-loop
latency is measured from each request's *scheduled* send time, so queueing behind a slow server is
counted (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.stats import summarize

Send = Callable[[], Awaitable[bool]]


@dataclass
class LoadResult:
    mode: str
    concurrency: int
    rate_rps: float | None
    duration_s: float
    ok: int
    errors: int
    latencies_s: list[float] = field(repr=False, default_factory=list)
    sent_rps: float | None = None  # open loop: the rate its requests were sent at (below rate_rps: late)

    def as_dict(self) -> dict[str, Any]:
        stats = summarize(self.latencies_s).as_dict()
        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "rate_rps": self.rate_rps,
            **({"sent_rps": self.sent_rps} if self.mode == "open" else {}),
            "duration_s": round(self.duration_s, 3),
            "ok": self.ok,
            "errors": self.errors,
            "throughput_rps": self.ok / self.duration_s if self.duration_s else float("nan"),
            **stats,
        }


async def closed_loop(send: Send, concurrency: int, duration_s: float, warmup_s: float = 0.5) -> LoadResult:
    """``concurrency`` workers, each sending its next request as soon as the previous one is answered.

    A request counts (in ``ok``/``errors`` and its latency) when its reply arrives inside the
    measurement window ``[start + warmup_s, start + warmup_s + duration_s)``, and throughput is those
    replies over the window's length: the replies still in flight at the window's end are waited for but
    not counted, so a slow server's last latency is not added to the time it is credited with."""
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0}
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + duration_s

    async def worker() -> None:
        while (now := time.perf_counter()) < stop_at:
            ok = await _guarded(send)
            done = time.perf_counter()
            if measure_from <= done < stop_at:
                counts["ok" if ok else "errors"] += 1
                if ok:
                    latencies.append(done - now)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult("closed", concurrency, None, duration_s, counts["ok"], counts["errors"], latencies)


async def open_loop(send: Send, rate_rps: float, duration_s: float, max_in_flight: int = 1024) -> LoadResult:
    """Requests at a fixed rate regardless of answers; latency counted from the scheduled send time.

    The window is from the first send to the last reply, and at least the ``n / rate_rps`` seconds its
    ``n`` requests were offered over: the last one is sent ``(n - 1) / rate_rps`` in, so a server that
    answered faster than one interval was credited with more than the offered rate (one request at
    1 request/s, answered in 1 ms: 1000 requests/s).

    ``sent_rps`` is the rate the requests actually went out at, ``n`` over the last send's time plus
    one interval (``rate_rps`` on schedule): a client short of CPU (it shares the cores with the
    server) or held at ``max_in_flight`` sends late, and the lateness counts in the latencies, so a
    row whose ``sent_rps`` is below its ``rate_rps`` measured its client's queue, not the server's."""
    if not rate_rps > 0:
        raise ValueError(f"an open loop needs a rate above 0 requests/s, not {rate_rps}")
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0}
    interval, tasks = 1.0 / rate_rps, []
    start = time.perf_counter()
    limiter = asyncio.Semaphore(max_in_flight)

    sent: list[float] = []

    async def one(scheduled: float) -> None:
        async with limiter:
            sent.append(time.perf_counter())
            ok = await _guarded(send)
        counts["ok" if ok else "errors"] += 1
        if ok:
            latencies.append(time.perf_counter() - scheduled)

    offered = int(rate_rps * duration_s)
    for i in range(offered):
        scheduled = start + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    elapsed = max(time.perf_counter() - start, offered * interval)
    sent_rps = len(sent) / (max(sent) - start + interval) if sent else float("nan")
    return LoadResult("open", 0, rate_rps, elapsed, counts["ok"], counts["errors"], latencies, sent_rps)


async def _guarded(send: Send) -> bool:
    try:
        return await send()
    except Exception:  # noqa: BLE001 - a failed request is an error count, not a crashed benchmark
        return False


def kserve_binary_body(images: np.ndarray, input_name: str = "images") -> tuple[bytes, dict[str, str]]:
    """A KServe v2 HTTP infer body for ``images`` (UINT8) with the binary tensor extension both ways
    (``probabilities`` asked for as binary), and the headers that say where its JSON header ends."""
    header = {
        "inputs": [
            {
                "name": input_name,
                "shape": list(images.shape),
                "datatype": "UINT8",
                "parameters": {"binary_data_size": images.nbytes},
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    head = json.dumps(header).encode()
    headers = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}
    return head + images.tobytes(), headers


def kserve_http_sender(
    client: Any, url: str, model: str, images: np.ndarray, input_name: str = "images"
) -> Send:
    """KServe v2 HTTP infer with binary input and output tensors, body encoded once."""
    body, headers = kserve_binary_body(images, input_name)
    endpoint = f"{url}/v2/models/{model}/infer"

    async def send() -> bool:
        async with client.post(endpoint, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status == 200

    return send


def kserve_grpc_sender(stubs: Any, model: str, images: np.ndarray, input_name: str = "images") -> Send:
    """KServe v2 gRPC ModelInfer with raw input contents, request built once. ``stubs``: one stub, or
    a list of stubs over separate connections (:func:`bench.servers.grpc_channels`) taken in turn."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = input_name, "UINT8"
    tensor.shape.extend(images.shape)
    request.raw_input_contents.append(images.tobytes())
    request.outputs.add().name = "probabilities"
    turn = itertools.cycle(stubs if isinstance(stubs, list | tuple) else [stubs])

    async def send() -> bool:
        await next(turn).ModelInfer(request)
        return True

    return send


def naive_http_sender(client: Any, url: str, images: np.ndarray) -> Send:
    """The naive baseline's endpoint: raw UINT8 NHWC bytes, shape in a header."""
    body = images.tobytes()
    headers = {"X-Shape": ",".join(map(str, images.shape)), "Content-Type": "application/octet-stream"}

    async def send() -> bool:
        async with client.post(f"{url}/infer", data=body, headers=headers) as resp:
            await resp.read()
            return resp.status == 200

    return send
