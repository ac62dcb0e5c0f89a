"""The gateway's translation rows, over HTTP as a client sees it: each held-out sentence its own request
from ``concurrency`` clients, at every beam, mixed beams, the int8 entry, at one or several gateway
processes; and the gateway forwarding to one real Triton that serves every translator (through its own
scheduler or Triton's ``<name>`` model).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from bench.servers import gateway_cmd
from bench.translation_rows import MAX_LENGTH, Workload, make_row
from kiln.processes import running
from serving.triton.ports import free_port

log = logging.getLogger(__name__)
TARGET_CONCURRENCY = 32  # the gateway's translation targets compare this concurrency (issue 10)


async def _gateway_run(
    url: str,
    model: str,
    texts: list[str],
    beam: int | list[int],
    concurrency: int,
    rounds: int = 1,
    served: list[str] | None = None,
    max_length: int | None = MAX_LENGTH,
):
    """Each text as its own request from ``concurrency`` clients, ``rounds`` times over; ``beam`` may
    differ per text; each request asks for ``max_length`` (the workload's, one for every row of its
    table: :attr:`~bench.translation_rows.Workload.max_length`), or with None for none (the gateway's
    default for the model). Returns each text's translation (an ``<inconsistent ...>`` marker, which no
    reference equals, if its rounds disagreed), the seconds of the whole run and every latency.
    ``served``, where given, receives every answer's translation, each text's rounds together in the
    order of ``texts``: the marker is no translation, so a row's tokens and BLEU are read over these
    (:func:`bench.translation_rows.make_row`).

    Each client holds one keep-alive HTTP/1.1 connection and sends bodies encoded before the clock
    starts, as load generators do (wrk, perf_analyzer): the clients share the 2 cores with the gateway,
    so what the client spends is taken from the server under test. aiohttp took ~0.25 ms of CPU a
    request; a client of streams ~0.15 ms (950 vs 1 096 sentences/s, 2 workers, c=32, interleaved);
    this one is callbacks on the loop (:class:`_Client`: the next request written from the callback
    that read the answer, no task or future per request) and keeps each answer's bytes, parsed once
    the clock has stopped. Run it with :func:`run_client` (uvloop where installed, as the gateway)."""
    host, _, port = url.removeprefix("http://").partition(":")
    beams = beam if isinstance(beam, list) else [beam] * len(texts)
    path = f"/v1/models/{model}/translate".encode()
    chosen = {} if max_length is None else {"max_length": max_length}
    requests = [
        _post(host, path, {"texts": [t], "beam_size": b, **chosen}) for t, b in zip(texts, beams, strict=True)
    ]
    queue = list(range(len(texts))) * rounds
    queue.reverse()
    answers: list[tuple[int, bytes]] = []
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    clients = [loop.create_future() for _ in range(concurrency)]
    for done in clients:
        client = _Client(url, requests, queue, answers, latencies, done)
        await loop.create_connection(lambda client=client: client, host, int(port))
    await asyncio.wait_for(asyncio.gather(*clients), timeout=600)
    seconds = time.perf_counter() - start
    hyps: list[str | None] = [None] * len(texts)
    inconsistent: set[int] = set()
    every: list[list[str]] = [[] for _ in texts]
    for i, body in answers:
        text = json.loads(body)["translations"][0]["hypotheses"][0]["text"]
        every[i].append(text)
        if hyps[i] is None:
            hyps[i] = text
        elif hyps[i] != text and i not in inconsistent:
            inconsistent.add(i)
            hyps[i] = f"<inconsistent across rounds: {hyps[i]!r} then {text!r}>"
    if served is not None:
        served.extend(text for texts_of_one in every for text in texts_of_one)
    return hyps, seconds, latencies


class _Client(asyncio.Protocol):
    """One connection of :func:`_gateway_run`: writes the next request of ``queue`` once the answer to
    the last is read whole (HTTP/1.1 with a Content-Length, as the gateway answers), keeps
    ``(text index, body)`` and the latency, and settles ``done`` when the queue is empty (or with the
    error: a status other than 200, an answer it cannot read, the connection lost)."""

    def __init__(self, url, requests, queue, answers, latencies, done) -> None:
        self.url, self.requests, self.queue, self.done = url, requests, queue, done
        self.answers, self.latencies = answers, latencies
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.text, self.sent, self.head, self.length, self.status = -1, 0.0, -1, 0, 0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        self._next()

    def _next(self) -> None:
        if not self.queue:
            self._finish(None)
            return
        self.text = self.queue.pop()
        self.sent = time.perf_counter()
        self.transport.write(self.requests[self.text])

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if self.head < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buffer[:end]).split(b"\r\n")
            length = [line for line in lines if line[:15].lower() == b"content-length:"]
            if not length:
                self._finish(RuntimeError(f"{self.url}: an answer without a Content-Length: {lines[0]!r}"))
                return
            self.status, self.length, self.head = (
                int(lines[0].split(b" ", 2)[1]),
                int(length[0][15:]),
                end + 4,
            )
        if len(buffer) < self.head + self.length:
            return
        body = bytes(buffer[self.head : self.head + self.length])
        del buffer[: self.head + self.length]
        self.head = -1
        if self.status != 200:
            self._finish(RuntimeError(f"{self.url}: HTTP {self.status} for text {self.text}: {body[:300]!r}"))
            return
        self.latencies.append(time.perf_counter() - self.sent)
        self.answers.append((self.text, body))
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc or ConnectionError(f"{self.url}: the connection closed with a request in flight"))

    def _finish(self, error: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(error) if error else self.done.set_result(None)
        self.transport.close()


def run_client(coroutine):
    """Run a load client's coroutine on uvloop where it is installed (it comes with the gateway's
    ``uvicorn[standard]``; its loop took ~18 % less of the client's CPU a request than asyncio's),
    else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def _post(host: str, path: bytes, payload: dict[str, Any]) -> bytes:
    """One HTTP/1.1 JSON POST, keep-alive."""
    body = json.dumps(payload).encode()
    head = b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    return head % (path, host.encode(), len(body)) + body


STEADY_REQUESTS = 16  # per client in a timed run: the ramp-down (fewer than c in flight) stays ~1/16 of it


def steady_rounds(texts: int, concurrency: int) -> int:
    """Passes over the texts so that each of ``concurrency`` clients sends ``STEADY_REQUESTS``: 128
    texts at c=32 last ~0.14 s, a quarter of it in the ramp-down while the last requests finish."""
    return max(1, -(-STEADY_REQUESTS * concurrency // texts))


def _median_run(
    url: str,
    model: str,
    texts: list[str],
    beam: int | list[int],
    concurrency: int,
    repeats: int = 3,
    max_length: int | None = MAX_LENGTH,
):
    """The run of median duration among ``repeats`` (one short run on 2 shared cores varies up to 2x;
    the identity check of the other translators runs each once), each :func:`steady_rounds` passes over
    the texts; the seconds returned are those of one pass, and with them every translation the run
    served (:func:`_gateway_run`'s ``served``)."""
    rounds = steady_rounds(len(texts), concurrency)
    runs = []
    for _ in range(repeats):
        served: list[str] = []
        run = _gateway_run(url, model, texts, beam, concurrency, rounds, served, max_length)
        runs.append((*run_client(run), served))
    hyps, seconds, latencies, served = sorted(runs, key=lambda run: run[1])[len(runs) // 2]
    return hyps, seconds / rounds, latencies, served


def gateway_engine(kind: str, workers: int) -> str:
    """A gateway row's engine name, stating its layout: "gateway (2 workers)", "gateway (int8 entry, 1 worker)"."""
    layout = f"{workers} worker{'s' if workers > 1 else ''}"
    return f"gateway ({kind}, {layout})" if kind else f"gateway ({layout})"


def triton_engine(mode: str) -> str:
    """A gateway->Triton row's engine name, stating its layout as :func:`gateway_engine` does: one gateway
    worker (:func:`triton_rows` starts it so, whatever ``--gateway-workers``), "gateway->triton (scheduler,
    1 worker)"."""
    return f"gateway->triton ({mode}, 1 worker)"


def gateway_rows(
    repository,
    model,
    texts,
    refs,
    beams,
    concurrencies,
    threads,
    out,
    count,
    layouts=(1,),
    repeats=3,
    max_length: int = MAX_LENGTH,
) -> list[dict[str, Any]]:
    """Every gateway row once per layout (``layouts``: gateway processes, the ``threads`` split among
    them), each the run of median duration among ``repeats``, every request asking for ``max_length``."""
    rows = []
    for workers in layouts:
        rows += _layout_rows(
            repository,
            model,
            texts,
            refs,
            beams,
            concurrencies,
            threads,
            out,
            count,
            workers,
            repeats,
            max_length,
        )
    return rows


def _layout_rows(
    repository, model, texts, refs, beams, concurrencies, threads, out, count, workers, repeats, max_length
) -> list[dict[str, Any]]:
    http, grpc = free_port(), free_port()
    url = f"http://127.0.0.1:{http}"
    rows = []

    def add(kind: str, beam, c: int, entry: str = model) -> dict[str, Any]:
        hyps, elapsed, lat, served = _median_run(url, entry, texts, beam, c, repeats, max_length)
        engine = gateway_engine(kind, workers)
        label = beam if isinstance(beam, int) else 0
        row = make_row(engine, label, c, texts, hyps, refs, elapsed, count, lat, served=served)
        # a text translated differently from one round to the next (see _gateway_run's marker)
        inconsistent = sum(1 for h in hyps if (h or "").startswith("<inconsistent across rounds"))
        rows.append({**row, "workers": workers, "inconsistent_across_rounds": inconsistent})
        log.info("%s %s beam %s c=%d: %.0f tokens/s", entry, engine, row["beam"], c, row["tokens_per_s"])
        return rows[-1]

    with running(
        gateway_cmd(repository, http, grpc, threads, workers=workers),
        f"{url}/v2/health/ready",
        log_path=out / f"gateway-translate-{model}-{workers}w.log",
    ):
        int8 = f"{model}_int8" if (Path(repository) / f"{model}_int8").is_dir() else None  # export wrote one
        for entry in filter(None, (model, int8)):  # warm up every entry measured (first runs are slow)
            for _ in range(workers):  # each worker process has its own sessions to warm
                run_client(_gateway_run(url, entry, texts[:8], 4, 4, max_length=max_length))
        for beam in beams:
            for c in concurrencies:
                add("", beam, c)
        if len(beams) > 1:  # requests of mixed beam sizes share the decoder steps
            mixed = mixed_beams(beams, len(texts))
            add("mixed beams", mixed, max(concurrencies))["beams"] = mixed
        if int8:  # at the concurrency its target reads, where the profile measures it
            c = TARGET_CONCURRENCY if TARGET_CONCURRENCY in concurrencies else max(concurrencies)
            add("int8 entry", 4, c, int8)
    return rows


def mixed_beams(beams, n: int) -> list[int]:
    """Per-request beam sizes cycling through ``beams``: requests of mixed beam sizes share decoder steps."""
    return [beams[i % len(beams)] for i in range(n)]


def triton_rows(
    repository, workloads: list[Workload], beams, concurrency, threads, out
) -> dict[str, list[dict[str, Any]]]:
    """Gateway -> one real Triton serving every translator, both ways to translate: the gateway's own
    scheduler over Triton's encoder/decoder entries (beam 4), and Triton's ``<name>`` model (every beam,
    and mixed beams where there are several). Rows per translator, each on its own sentences."""
    from bench.triton_layouts import keep_triton_repository
    from serving.triton import TritonServer, find_triton

    if find_triton() is None:
        raise RuntimeError("the tritonserver binary from nvidia-pytriton is not installed")
    rows: dict[str, list[dict[str, Any]]] = {w.model: [] for w in workloads}
    keep = keep_triton_repository()
    with TritonServer(repository, out / "triton-translate", threads=threads, keep_repository=keep) as triton:
        for mode, mode_beams in (("scheduler", (4,)), ("triton", tuple(beams))):
            http, grpc = free_port(), free_port()
            url = f"http://127.0.0.1:{http}"
            cmd = gateway_cmd(repository, http, grpc, threads, triton_url=triton.grpc_url, translate=mode)
            with running(cmd, f"{url}/v2/health/ready", log_path=out / f"gateway-triton-{mode}.log"):
                for w in workloads:
                    rows[w.model] += _triton_mode_rows(url, w, triton_engine(mode), mode_beams, concurrency)
    return rows


def _triton_mode_rows(url: str, w: Workload, engine: str, beams, concurrency: int) -> list[dict[str, Any]]:
    run_client(_gateway_run(url, w.model, w.texts[:8], 4, 4, max_length=w.max_length))  # warm-up
    runs: list[tuple[int, int | list[int]]] = [(b, b) for b in beams]
    if len(beams) > 1:
        runs.append((0, mixed_beams(beams, len(w.texts))))
    rows = []
    for label, beam in runs:
        hyps, elapsed, lat = run_client(
            _gateway_run(url, w.model, w.texts, beam, concurrency, max_length=w.max_length)
        )
        rows.append(make_row(engine, label, concurrency, w.texts, hyps, w.refs, elapsed, w.count, lat))
        if isinstance(beam, list):
            rows[-1]["beams"] = beam
        log.info(
            "%s %s beam %s c=%d: %.0f tokens/s", w.model, engine, label, concurrency, rows[-1]["tokens_per_s"]
        )
    return rows
