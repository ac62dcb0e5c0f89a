"""Translation side by side: the gateway (iteration-level batched beam search over ONNX Runtime), the
PyTorch reference beam search with and without its KV cache, and CTranslate2 on the same weights.

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
from bench.stats import ratio, summarize
from kiln.processes import running
from serving.triton.server import free_port

log = logging.getLogger(__name__)


def bleu(hyps: list[str], refs: list[str]) -> float:
    import sacrebleu

    return round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)


class Counter:
    """Counts output tokens identically for every engine: target subwords + EOS."""

    def __init__(self, tokenizer_json: str) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_str(tokenizer_json)

    def __call__(self, texts: list[str]) -> int:
        return sum(len(self.tok.encode(t).ids) + 1 for t in texts)


def _row(
    engine: str,
    beam: int,
    concurrency: int,
    texts: list[str],
    hyps: list[str],
    refs,
    elapsed,
    count,
    lat=None,
):
    row = {
        "engine": engine, "beam": beam, "concurrency": concurrency, "sentences": len(texts),
        "sentences_per_s": len(texts) / elapsed, "tokens_per_s": count(hyps) / elapsed, "bleu": bleu(hyps, refs),
        "exact_match": 100.0 * sum(h == r for h, r in zip(hyps, refs, strict=True)) / len(refs),
        "hyps": hyps,
    }  # fmt: skip
    if lat is not None:
        row.update({k: v for k, v in summarize(lat).as_dict().items() if k in ("p50_ms", "p90_ms", "p99_ms")})
    return row


def agreement(rows: list[dict[str, Any]]) -> None:
    """Per row: % of sentences whose translation equals the PyTorch reference (KV cache) at the same beam."""
    reference = {r["beam"]: r["hyps"] for r in rows if r["engine"] == "pytorch (kv cache)"}
    for r in rows:
        beams = r.get("beams") or [r["beam"]] * len(r["hyps"])
        if all(b in reference for b in set(beams)):
            same = sum(h == reference[b][i] for i, (h, b) in enumerate(zip(r["hyps"], beams, strict=True)))
            r["same_as_reference"] = 100.0 * same / len(beams)


def pytorch_rows(ckpt, texts, refs, beams, threads, count, batch: int = 32) -> list[dict[str, Any]]:
    import torch

    from training.checkpoint import rebuild_model
    from training.data.tokenizer import TokenizerPair
    from training.decoding import beam_search

    torch.set_num_threads(threads)
    model = rebuild_model(ckpt)
    tok = TokenizerPair.from_dict(ckpt["tokenizers"])
    rows = []
    for use_cache in (True, False):
        for beam in beams:
            hyps, start = [], time.perf_counter()
            for i in range(0, len(texts), batch):
                src = tok.encode_source(texts[i : i + batch])
                width = max(map(len, src))
                x = torch.tensor([s + [0] * (width - len(s)) for s in src])
                for h in beam_search(model, x, beam_size=beam, max_length=64, use_cache=use_cache):
                    hyps.append(tok.decode_target(h[0].tokens))
            name = "pytorch (kv cache)" if use_cache else "pytorch (no cache)"
            rows.append(_row(name, beam, batch, texts, hyps, refs, time.perf_counter() - start, count))
    return rows


def ctranslate2_rows(ckpt_path: Path, ckpt, texts, refs, beams, out: Path, count) -> list[dict[str, Any]]:
    from bench.ctranslate import CT2Translator, convert

    model_dir = convert(ckpt_path, out / "ctranslate2", force=True)
    translator = CT2Translator(model_dir, ckpt["tokenizers"], inter_threads=2, intra_threads=1)
    rows = []
    for beam in beams:
        translator.translate(texts[:8], beam_size=beam)  # warm up
        start = time.perf_counter()
        hyps = [t for t, _ in translator.translate(texts, beam_size=beam, max_length=64)]
        rows.append(
            _row(
                "ctranslate2 (inter 2, intra 1)",
                beam,
                32,
                texts,
                hyps,
                refs,
                time.perf_counter() - start,
                count,
            )
        )
    return rows


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
                body = {"texts": [texts[i]], "beam_size": beams[i], "max_length": 64}
                async with session.post(endpoint, json=body) as resp:
                    resp.raise_for_status()
                    answer = await resp.json()
                latencies.append(time.perf_counter() - t0)
                hyps[i] = answer["translations"][0]["hypotheses"][0]["text"]

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return hyps, time.perf_counter() - start, latencies


def gateway_rows(
    repository, model, texts, refs, beams, concurrencies, threads, out, count
) -> list[dict[str, Any]]:
    http, grpc = free_port(), free_port()
    url = f"http://127.0.0.1:{http}"
    rows = []
    with running(
        gateway_cmd(repository, http, grpc, threads),
        f"{url}/v2/health/ready",
        log_path=out / "gateway-translate.log",
    ):
        asyncio.run(_gateway_run(url, model, texts[:8], 4, 4))  # warm up sessions
        for beam in beams:
            for c in concurrencies:
                hyps, elapsed, lat = asyncio.run(_gateway_run(url, model, texts, beam, c))
                rows.append(_row("gateway", beam, c, texts, hyps, refs, elapsed, count, lat))
                log.info("gateway beam %d c=%d: %.0f tokens/s", beam, c, rows[-1]["tokens_per_s"])
        if len(beams) > 1:  # requests of mixed beam sizes share the decoder steps
            mixed = [beams[i % len(beams)] for i in range(len(texts))]
            c = max(concurrencies)
            hyps, elapsed, lat = asyncio.run(_gateway_run(url, model, texts, mixed, c))
            row = _row("gateway (mixed beams)", 0, c, texts, hyps, refs, elapsed, count, lat)
            rows.append({**row, "beams": mixed})
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
                _row(f"gateway->triton ({mode})", 4, concurrency, texts, hyps, refs, elapsed, count, lat)
            )
    return rows


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
    progress(f"translation: gateway, {len(texts)} sentences, beams {list(beams)}")
    rows += gateway_rows(args.repository, args.translator, texts, refs, beams, profile["translate_concurrency"],
                         args.threads, out / "logs", count)  # fmt: skip
    try:
        progress("translation: gateway -> Triton (own scheduler vs Triton's python model)")
        rows += triton_rows(args.repository, args.translator, texts, refs, max(profile["translate_concurrency"]),
                            args.threads, out / "logs", count)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - reported in the results, the rest still counts
        errors["triton"] = str(exc)
    progress("translation: PyTorch reference (with and without cache)")
    rows += pytorch_rows(ckpt, texts, refs, beams, args.threads, count)
    try:
        progress("translation: CTranslate2 on the same weights")
        rows += ctranslate2_rows(ckpt_path, ckpt, texts, refs, beams, out, count)
    except Exception as exc:  # noqa: BLE001 - reported in the results, the rest still counts
        errors["ctranslate2"] = str(exc)
    agreement(rows)
    gw = next(
        (r for r in rows if r["engine"] == "gateway" and r["beam"] == 4 and r["concurrency"] == 32), None
    )
    ct = next((r for r in rows if r["engine"].startswith("ctranslate2") and r["beam"] == 4), None)
    targets = [{
        "target": "gateway translate c=32 beam 4 >= 1.0x CTranslate2 tokens/s (same weights, equal BLEU)",
        "goal": 1.0, "measured": ratio(gw["tokens_per_s"], ct["tokens_per_s"]) if gw and ct else float("nan"),
        "note": f"BLEU gateway {gw['bleu'] if gw else '–'} vs CTranslate2 {ct['bleu'] if ct else '–'}",
    }]  # fmt: skip
    cols = ["engine", "beam", "concurrency", "sentences", "tokens_per_s", "sentences_per_s", "p50_ms", "p99_ms",
            "bleu", "exact_match", "same_as_reference"]  # fmt: skip
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
