"""Translation side by side: the gateway (iteration-level batched beam search over ONNX Runtime), Kiln's
decoding engine in-process (batch engine, scheduler path, batch-1 latency), the PyTorch reference beam
search with and without its KV cache, and CTranslate2 on the same weights (fp32 and int8, at its best
layout on two cores and at one thread).

Every engine translates the same held-out test sentences; tokens are counted the same way for all
(target subwords of the output plus EOS), and each row carries its BLEU so speed and quality are read
together.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import table
from bench.servers import gateway_cmd
from bench.stats import ratio
from bench.translation_engines import ctranslate2_rows, engine_rows, pytorch_rows
from bench.translation_rows import MAX_LENGTH, Counter, agreement, make_row
from kiln.processes import running
from serving.triton.server import free_port

log = logging.getLogger(__name__)
TARGET_CONCURRENCY = 32  # the gateway's translation targets compare this concurrency (issue 10)


async def _gateway_run(url: str, model: str, texts: list[str], beam: int | list[int], concurrency: int):
    """Each text as its own request from ``concurrency`` clients; ``beam`` may differ per text."""
    import aiohttp

    hyps: list[str | None] = [None] * len(texts)
    beams = beam if isinstance(beam, list) else [beam] * len(texts)
    latencies: list[float] = []
    queue = list(range(len(texts)))[::-1]
    endpoint = f"{url}/v1/models/{model}/translate"
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=300)
    ) as session:

        async def worker() -> None:
            while queue:
                i = queue.pop()
                t0 = time.perf_counter()
                body = {"texts": [texts[i]], "beam_size": beams[i], "max_length": MAX_LENGTH}
                async with session.post(endpoint, json=body) as resp:
                    resp.raise_for_status()
                    answer = await resp.json()
                latencies.append(time.perf_counter() - t0)
                hyps[i] = answer["translations"][0]["hypotheses"][0]["text"]

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return hyps, time.perf_counter() - start, latencies


def _median_run(
    url: str, model: str, texts: list[str], beam: int | list[int], concurrency: int, repeats: int = 3
):
    """The run of median duration among ``repeats`` (one short run on 2 shared cores varies up to 2x)."""
    runs = sorted(
        (asyncio.run(_gateway_run(url, model, texts, beam, concurrency)) for _ in range(repeats)),
        key=lambda run: run[1],
    )
    return runs[len(runs) // 2]


def gateway_engine(kind: str, workers: int) -> str:
    """A gateway row's engine name, stating its layout: "gateway (2 workers)", "gateway (int8 entry, 1 worker)"."""
    layout = f"{workers} worker{'s' if workers > 1 else ''}"
    return f"gateway ({kind}, {layout})" if kind else f"gateway ({layout})"


def gateway_rows(
    repository, model, texts, refs, beams, concurrencies, threads, out, count, layouts=(1,)
) -> list[dict[str, Any]]:
    """Every gateway row once per layout (``layouts``: gateway processes, the ``threads`` split among them)."""
    rows = []
    for workers in layouts:
        rows += _layout_rows(
            repository, model, texts, refs, beams, concurrencies, threads, out, count, workers
        )
    return rows


def _layout_rows(
    repository, model, texts, refs, beams, concurrencies, threads, out, count, workers
) -> list[dict[str, Any]]:
    http, grpc = free_port(), free_port()
    url = f"http://127.0.0.1:{http}"
    rows = []

    def add(kind: str, beam, c: int, entry: str = model) -> dict[str, Any]:
        hyps, elapsed, lat = _median_run(url, entry, texts, beam, c)
        engine = gateway_engine(kind, workers)
        row = make_row(
            engine, beam if isinstance(beam, int) else 0, c, texts, hyps, refs, elapsed, count, lat
        )
        rows.append({**row, "workers": workers})
        log.info("%s beam %s c=%d: %.0f tokens/s", engine, row["beam"], c, row["tokens_per_s"])
        return rows[-1]

    with running(
        gateway_cmd(repository, http, grpc, threads, workers=workers),
        f"{url}/v2/health/ready",
        log_path=out / f"gateway-translate-{workers}w.log",
    ):
        int8 = f"{model}_int8" if (Path(repository) / f"{model}_int8").is_dir() else None  # export wrote one
        for entry in filter(None, (model, int8)):  # warm up every entry measured (first runs are slow)
            for _ in range(workers):  # each worker process has its own sessions to warm
                asyncio.run(_gateway_run(url, entry, texts[:8], 4, 4))
        for beam in beams:
            for c in concurrencies:
                add("", beam, c)
        if len(beams) > 1:  # requests of mixed beam sizes share the decoder steps
            mixed = [beams[i % len(beams)] for i in range(len(texts))]
            add("mixed beams", mixed, max(concurrencies))["beams"] = mixed
        if int8:  # at the concurrency its target reads, where the profile measures it
            c = TARGET_CONCURRENCY if TARGET_CONCURRENCY in concurrencies else max(concurrencies)
            add("int8 entry", 4, c, int8)
    return rows


def triton_rows(repository, model, texts, refs, concurrency, threads, out, count) -> list[dict[str, Any]]:
    """Gateway -> real Triton, both ways to translate: its own scheduler, or Triton's <name> model."""
    from serving.triton import TritonServer, find_triton

    if find_triton() is None:
        raise RuntimeError("the tritonserver binary from nvidia-pytriton is not installed")
    rows = []
    with TritonServer(repository, out / "triton-translate", threads=threads) as triton:
        for mode in ("scheduler", "triton"):
            http, grpc = free_port(), free_port()
            url = f"http://127.0.0.1:{http}"
            cmd = gateway_cmd(repository, http, grpc, threads, triton_url=triton.grpc_url, translate=mode)
            with running(cmd, f"{url}/v2/health/ready", log_path=out / f"gateway-triton-{mode}.log"):
                asyncio.run(_gateway_run(url, model, texts[:8], 4, 4))
                hyps, elapsed, lat = asyncio.run(_gateway_run(url, model, texts, 4, concurrency))
            rows.append(
                make_row(f"gateway->triton ({mode})", 4, concurrency, texts, hyps, refs, elapsed, count, lat)
            )
    return rows


def _find(rows, engine: str, beam: int = 4, concurrency: int | None = None) -> dict[str, Any] | None:
    return next(
        (
            r
            for r in rows
            if r["engine"] == engine
            and r["beam"] == beam
            and (concurrency is None or r["concurrency"] == concurrency)
        ),
        None,
    )


def best_gateway(
    rows, kind: str = "", beam: int = 4, concurrency: int = TARGET_CONCURRENCY
) -> dict[str, Any] | None:
    """The gateway layout with the most tokens/s for this kind of row (the one the targets use)."""
    found = [
        r
        for r in rows
        if "workers" in r
        and r["engine"] == gateway_engine(kind, r["workers"])
        and r["beam"] == beam
        and r["concurrency"] == concurrency
    ]
    return max(found, key=lambda r: r["tokens_per_s"], default=None)


def acceptance(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 10's figures: each measured ratio with its goal (reported, never asserted); the gateway
    targets use its best layout measured in this run, named in the target."""
    ct_best = _find(rows, "ctranslate2 fp32 (inter 2, intra 1)")
    ct_one = _find(rows, "ctranslate2 fp32 (1 thread)", concurrency=32)
    ct_lat = _find(rows, "ctranslate2 fp32 (1 thread)", concurrency=1)
    gateway, int8 = best_gateway(rows), best_gateway(rows, "int8 entry")
    checks = [
        (
            f"{_name(gateway, 'gateway')} c=32 beam 4 tokens/s >= 0.5x CTranslate2 fp32 at its best layout",
            0.5,
            gateway,
            ct_best,
            "tokens_per_s",
            False,
        ),
        (
            f"{_name(gateway, 'gateway')} c=32 beam 4 >= 4x the PyTorch reference with KV cache",
            4.0,
            gateway,
            _find(rows, "pytorch (kv cache)"),
            "tokens_per_s",
            False,
        ),
        (
            "in-process engine (batch 32, 1 thread) >= 0.6x CTranslate2 fp32 at 1 thread",
            0.6,
            _find(rows, "kiln engine (batch 32)"),
            ct_one,
            "tokens_per_s",
            False,
        ),
        (
            f"{_name(int8, 'int8 entry through the gateway')} >= 0.7x CTranslate2 fp32 at its best layout",
            0.7,
            int8,
            ct_best,
            "tokens_per_s",
            False,
        ),
        (
            "batch-1 latency p50 (beam 4) <= 2x CTranslate2 fp32 at 1 thread",
            2.0,
            _find(rows, "kiln engine (scheduler)", concurrency=1),
            ct_lat,
            "p50_ms",
            True,
        ),
    ]
    return [_target(*check) for check in checks]


def _name(row: dict[str, Any] | None, fallback: str) -> str:
    return row["engine"] if row else fallback


def _target(target: str, goal: float, ours, theirs, key: str, lower_is_better: bool) -> dict[str, Any]:
    measured = (
        ratio(ours[key], theirs[key]) if ours and theirs and key in ours and key in theirs else float("nan")
    )
    note = (
        f"agreement with the reference: {ours.get('same_as_reference', float('nan')):.1f}%"
        if ours
        else "not run"
    )
    return {
        "target": target,
        "goal": goal,
        "measured": measured,
        "note": note,
        "lower_is_better": lower_is_better,
    }


def run(
    args, profile: dict[str, Any], out: Path, progress: Callable[[str], None] = log.info
) -> dict[str, Any]:
    from training.checkpoint import load_checkpoint
    from training.translate import held_out_pairs

    ckpt_path = args.checkpoints / f"{args.translator}.pt"
    ckpt = load_checkpoint(ckpt_path)
    pairs = held_out_pairs(ckpt, "test")[: profile["sentences"]]
    texts, refs = [s for s, _ in pairs], [t for _, t in pairs]
    count = Counter(ckpt["tokenizers"]["target"])
    beams, rows, errors = profile["beams"], [], {}
    (out / "logs").mkdir(parents=True, exist_ok=True)
    progress(
        f"translation: gateway (1 and {args.gateway_workers} workers), {len(texts)} sentences, beams {list(beams)}"
    )
    rows += gateway_rows(
        args.repository,
        args.translator,
        texts,
        refs,
        beams,
        profile["translate_concurrency"],
        args.threads,
        out / "logs",
        count,
        layouts=sorted({1, args.gateway_workers}),
    )
    try:
        progress("translation: gateway -> Triton (own scheduler vs Triton's python model)")
        rows += triton_rows(
            args.repository,
            args.translator,
            texts,
            refs,
            max(profile["translate_concurrency"]),
            args.threads,
            out / "logs",
            count,
        )
    except Exception as exc:  # noqa: BLE001 - reported in the results, the rest still counts
        errors["triton"] = str(exc)
    progress("translation: Kiln's decoding engine in-process (batch, scheduler, batch-1)")
    rows += engine_rows(args.repository, args.translator, texts, refs, beams, count)
    progress("translation: PyTorch reference (with and without cache)")
    rows += pytorch_rows(ckpt, texts, refs, beams, args.threads, count)
    try:
        progress("translation: CTranslate2 on the same weights")
        rows += ctranslate2_rows(ckpt_path, ckpt, texts, refs, beams, out, count)
    except Exception as exc:  # noqa: BLE001 - reported in the results, the rest still counts
        errors["ctranslate2"] = str(exc)
    agreement(rows)
    targets = acceptance(rows)
    cols = [
        "engine",
        "beam",
        "concurrency",
        "sentences",
        "tokens_per_s",
        "sentences_per_s",
        "p50_ms",
        "p99_ms",
        "bleu",
        "exact_match",
        "same_as_reference",
    ]
    md = "## Translation (`transformer`, held-out test sentences)\n\n" + table(rows, cols) + "\n"
    if errors:
        md += "\n" + "\n".join(f"- {k}: {v}" for k, v in errors.items()) + "\n"
    return {
        "rows": rows,
        "errors": errors,
        "targets": targets,
        "markdown": md,
        "python": sys.version.split()[0],
    }
