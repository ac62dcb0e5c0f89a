"""Gateway replicas behind a real balancer on one machine: what scaling out changes, measured and checked.

Each replica is ``python -m serving`` (embedded ONNX Runtime, its own batcher and decoding scheduler) on
127.0.0.1 free ports; haproxy (bench.balancer) fronts them for HTTP and gRPC. Clients check every
answer against what one gateway answers alone, so "wrong" means a different answer, not a slow one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.balancer import Balancer, Upstream, server_stats
from bench.load import kserve_binary_body
from bench.servers import gateway_cmd
from kiln.processes import running
from serving.triton.ports import held_port

Ask = Callable[[int], Awaitable[Any]]  # input index -> answer


@dataclass
class Replica:
    upstream: Upstream
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.upstream.http_port}"


@dataclass
class Tally:
    """Answers counted by kind; a few error messages kept to say what failed.

    ``cut``: the replica died after its answer had begun (no balancer can retry those); ``failed``:
    any other error, such as the balancer giving up on a request no replica answered.
    """

    ok: int = 0
    wrong: int = 0
    failed: int = 0
    cut: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "wrong": self.wrong,
            "failed": self.failed,
            "cut": self.cut,
            "errors": self.errors[:5],
        }


@contextlib.contextmanager
def run_replicas(repository: Path, n: int, workdir: Path, threads: int = 1) -> Iterator[list[Replica]]:
    """Start ``n`` gateway processes on ``repository``, each until ready; stop every one on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        replicas = []
        for i in range(n):
            # held (SO_REUSEPORT, never listening) until the replica is stopped: it binds beside them
            # with --reuse-port, and no other process can take one between the draw and its bind
            held = [stack.enter_context(held_port(reuse_port=True)) for _ in range(2)]
            http, grpc = (sock.getsockname()[1] for sock in held)
            proc = stack.enter_context(
                running(
                    [*gateway_cmd(repository, http, grpc, threads), "--reuse-port"],
                    f"http://127.0.0.1:{http}/v2/health/ready",
                    log_path=workdir / f"replica{i}.log",
                )
            )
            replicas.append(Replica(Upstream(f"replica{i}", http, grpc), proc))
        yield replicas


# -- clients: one request per input index, the answer decoded ------------------------------------------


def classifier_input(repository: Path, model: str, count: int, seed: int = 0) -> tuple[str, np.ndarray]:
    """(input tensor name, ``count`` random UINT8 images shaped like the entry's input)."""
    meta = json.loads((repository / model / "kiln.json").read_text(encoding="utf-8"))
    spec = meta["inputs"][0]
    dims = [int(d) for d in spec["dims"][1:]]
    return spec["name"], np.random.default_rng(seed).integers(0, 256, size=(count, *dims), dtype=np.uint8)


def http_classifier(session: Any, url: str, model: str, input_name: str, images: np.ndarray) -> Ask:
    """KServe v2 HTTP infer, binary tensors both ways: image ``i`` in, its probabilities out."""

    async def ask(i: int) -> np.ndarray:
        body, headers = kserve_binary_body(images[i : i + 1], input_name)
        async with session.post(f"{url}/v2/models/{model}/infer", data=body, headers=headers) as r:
            raw = await r.read()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {raw[:200]!r}")
            return np.frombuffer(raw[int(r.headers["Inference-Header-Content-Length"]) :], np.float32)

    return ask


def grpc_classifier(stub: Any, model: str, input_name: str, images: np.ndarray) -> Ask:
    """KServe v2 gRPC ModelInfer with raw contents: image ``i`` in, its probabilities out."""
    from tritonclient.grpc import service_pb2

    async def ask(i: int) -> np.ndarray:
        request = service_pb2.ModelInferRequest(model_name=model)
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = input_name, "UINT8"
        tensor.shape.extend(images[i : i + 1].shape)
        request.raw_input_contents.append(images[i : i + 1].tobytes())
        request.outputs.add().name = "probabilities"
        response = await stub.ModelInfer(request, timeout=60)
        return np.frombuffer(response.raw_output_contents[0], np.float32)

    return ask


def http_translator(session: Any, url: str, model: str, texts: Sequence[str], beam_size: int = 4) -> Ask:
    """The friendly REST translate route: text ``i`` in, its best hypothesis out."""

    async def ask(i: int) -> str:
        body = {"texts": [texts[i]], "beam_size": beam_size}
        async with session.post(f"{url}/v1/models/{model}/translate", json=body) as r:
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:200]}")
            return (await r.json())["translations"][0]["hypotheses"][0]["text"]

    return ask


def cut_mid_response(error: BaseException) -> bool:
    """True when the answer had begun when the connection broke (HTTP: the body ended early; gRPC: the
    stream was reset rather than answered with the balancer's own 50x status)."""
    import aiohttp
    import grpc

    if isinstance(error, aiohttp.ClientPayloadError):
        return True
    if isinstance(error, grpc.aio.AioRpcError):
        balancer_status = "http2 header with status" in (error.details() or "")
        return error.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE) and not balancer_status
    return False


def same_answer(got: Any, want: Any) -> bool:
    """Texts exactly; probabilities to float32 noise (batch composition may change the last bits)."""
    if isinstance(want, np.ndarray):
        return got.shape == want.shape and np.allclose(got, want, rtol=0, atol=1e-5)
    return got == want


async def references(ask: Ask, count: int) -> list[Any]:
    """Every input answered alone, one after the other (ask one replica directly)."""
    return [await ask(i) for i in range(count)]


async def fixed_load(
    ask: Ask,
    expected: Sequence[Any],
    total: int,
    concurrency: int,
    on_answer: Callable[[int], None] | None = None,
) -> Tally:
    """``total`` requests from ``concurrency`` workers, inputs in turn; ``on_answer(n)`` after each."""
    tally, issued = Tally(), iter(range(total))

    async def worker() -> None:
        for n in issued:
            i = n % len(expected)
            try:
                answer = await ask(i)
            except Exception as error:  # noqa: BLE001 - a failed request is counted and described
                if cut_mid_response(error):
                    tally.cut += 1
                else:
                    tally.failed += 1
                tally.errors.append(f"{type(error).__name__}: {str(error)[:160]}")
            else:
                if same_answer(answer, expected[i]):
                    tally.ok += 1
                else:
                    tally.wrong += 1
            if on_answer is not None:
                on_answer(tally.ok + tally.wrong + tally.failed)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally


# -- what the balancer and the replicas report ----------------------------------------------------------


def answered_per_replica(balancer: Balancer, protocol: str) -> dict[str, int]:
    """2xx responses each replica gave through the balancer's ``http`` or ``grpc`` backend."""
    return {
        server: int(row["hrsp_2xx"] or 0)
        for (backend, server), row in server_stats(balancer).items()
        if backend == f"gateways_{protocol}"
    }


def retried(balancer: Balancer) -> dict[str, int]:
    """Requests haproxy retried (``wretr``) and sent to another replica (``wredis``), all backends."""
    rows = server_stats(balancer).values()
    return {key: sum(int(r[key] or 0) for r in rows) for key in ("wretr", "wredis")}


def rows_per_step(replica: Replica, model: str) -> tuple[float, float]:
    """(sum, count) of the replica's ``kiln_decoder_rows_per_step`` histogram for ``model``."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{replica.url}/metrics", timeout=10).text
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "kiln_decoder_rows_per_step":
            for sample in family.samples:
                if sample.labels.get("model") == model and sample.name.endswith("_sum"):
                    total += sample.value
                elif sample.labels.get("model") == model and sample.name.endswith("_count"):
                    count += sample.value
    return total, count
