"""The gateway's translation targets measured next to CTranslate2, round by round.

On a shared 2-core VM the machine's speed drifts over minutes: CTranslate2's best layout read 7 699,
8 970, 8 980 and 13 741 tokens/s in four runs of the same code, while the gateway and CTranslate2 rows
of one run are minutes apart, so their ratio mixed the code with the minute each ran in (0.29x and
0.50x for the same gateway code). Here the gateway (fp32 and its int8 entry, c=32, beam 4, the bench's
layout) and CTranslate2 fp32 at its best layout (inter 2, intra 1) alternate ``rounds`` times over the
same sentences, each round's ratio taken within seconds, and the targets read the median of those
ratios (the separate rows stay in the table). The PyTorch reference at its faster layout on a few
cores (one single-thread process per core, loaded once) takes its turn in each round too, and the
"4x the PyTorch reference" target reads the median of the gateway's ratios to it the same way: it
divided rows minutes apart before (3.17x in one run where the paired rounds' gateway read 9 % more
than its separate row). Batch-1 latency is paired the same way: Kiln's
in-process translator (one request at a time, beam 4) and CTranslate2 at one thread, 32 sentences
each per round, the ratio of their p50s. Nothing is handicapped: each engine keeps its own best
layout and warm-up, and the gateway's processes sit idle while CTranslate2 runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from bench.servers import gateway_cmd
from bench.translation_engines import PyTorchProcesses
from bench.translation_gateway import (
    TARGET_CONCURRENCY,
    _gateway_run,
    gateway_engine,
    run_client,
    steady_rounds,
)
from bench.translation_rows import MAX_LENGTH, Workload, median_pass
from kiln.processes import running
from serving.triton.server import free_port

log = logging.getLogger(__name__)

CT2_BEST = "ctranslate2 fp32 (inter 2, intra 1)"
CT2_ONE = "ctranslate2 fp32 (1 thread)"
KILN_ONE = "kiln engine (scheduler)"  # its c=1 row: one request at a time
LATENCY_SENTENCES = 32
PAIRED = " [paired]"  # suffix of the rows measured here


def _ctranslate2(w: Workload, out: Path, inter_threads: int) -> Any:
    """CTranslate2 fp32 on ``w``'s weights (``out/ctranslate2``: converted where the CTranslate2 rows did
    not already), one intra-op thread per translator."""
    from bench.ctranslate import CT2Translator, convert

    model_dir = convert(w.checkpoint, out / "ctranslate2", force=False)
    return CT2Translator(
        model_dir, w.ckpt["tokenizers"], inter_threads=inter_threads, intra_threads=1, compute_type="float32"
    )


def paired_rows(
    repository: Path, w: Workload, out: Path, threads: int, workers: int, rounds: int, beam: int = 4
) -> list[dict[str, Any]]:
    """One row per engine (the gateway, its int8 entry where export wrote one, CTranslate2 at its best
    layout, and with ``threads`` > 1 the PyTorch reference in ``threads`` single-thread processes, its
    faster layout on a few cores), each with its tokens/s per round and their median; the gateway rows
    also carry each round's ratio to CTranslate2's (``ratios``) and its median (``paired_ratio``), and
    to the PyTorch reference's (``versus[engine]``: ``ratios`` and ``paired_ratio``)."""
    with contextlib.ExitStack() as stack:
        pytorch = None
        if threads > 1:
            pytorch = stack.enter_context(
                PyTorchProcesses(w.checkpoint, w.texts, w.refs, threads, w.count, beam)
            )
        return _paired_rows(repository, w, out, threads, workers, rounds, beam, pytorch)


def _paired_rows(
    repository: Path,
    w: Workload,
    out: Path,
    threads: int,
    workers: int,
    rounds: int,
    beam: int,
    pytorch: PyTorchProcesses | None,
) -> list[dict[str, Any]]:
    translator = _ctranslate2(w, out, inter_threads=2)
    sources = translator.source_tokens(w.texts)
    int8 = f"{w.model}_int8" if (Path(repository) / f"{w.model}_int8").is_dir() else None
    entries = {gateway_engine("", workers): w.model}
    if int8:
        entries[gateway_engine("int8 entry", workers)] = int8
    passes = steady_rounds(len(w.texts), TARGET_CONCURRENCY)
    http, grpc = free_port(), free_port()
    url = f"http://127.0.0.1:{http}"
    references = [CT2_BEST] + ([pytorch.engine] if pytorch else [])
    tokens: dict[str, list[float]] = {name: [] for name in (*entries, *references)}
    last: dict[str, list[str]] = {}  # each engine's translations in its last round (read for agreement)

    def ctranslate2() -> float:
        answers, seconds = median_pass(
            lambda: translator.translate_tokens(sources, beam_size=beam, max_length=MAX_LENGTH),
            repeats=3,
            warmup=False,
        )
        last[CT2_BEST] = [text for text, _ in answers]
        return w.count(last[CT2_BEST]) / seconds

    def reference(name: str) -> float:
        if name == CT2_BEST:
            return ctranslate2()
        row = pytorch.row()
        last[name] = row["hyps"]
        return row["tokens_per_s"]

    def gateway(name: str) -> float:
        hyps, seconds, _ = run_client(
            _gateway_run(url, entries[name], w.texts, beam, TARGET_CONCURRENCY, passes)
        )
        last[name] = hyps
        return w.count(hyps) * passes / seconds

    with running(
        gateway_cmd(repository, http, grpc, threads, workers=workers),
        f"{url}/v2/health/ready",
        log_path=out / "logs" / f"gateway-paired-{w.model}.log",
    ):
        for name in entries:  # warm-up: every worker's sessions and buffers at the load measured
            gateway(name)
        ctranslate2()
        for r in range(rounds):
            order = [*entries, *references] if r % 2 == 0 else [*references, *entries]  # who goes first
            for name in order:
                tokens[name].append(reference(name) if name in references else gateway(name))
            log.info(
                "paired round %d: %s",
                r + 1,
                ", ".join(f"{n} {v[-1]:.0f} tokens/s" for n, v in tokens.items()),
            )
    rows = []
    for name, values in tokens.items():
        row = {
            "engine": name + PAIRED,
            "beam": beam,
            "concurrency": TARGET_CONCURRENCY,
            "sentences": len(w.texts),
            "tokens_per_s": statistics.median(values),
            "rounds": values,
            "hyps": last[name],
        }
        if name in entries:
            row["ratios"] = [ours / theirs for ours, theirs in zip(values, tokens[CT2_BEST], strict=True)]
            row["paired_ratio"], row["against"] = statistics.median(row["ratios"]), CT2_BEST
            row["versus"] = {}
            for other in references[1:]:
                ratios = [ours / theirs for ours, theirs in zip(values, tokens[other], strict=True)]
                row["versus"][other] = {"ratios": ratios, "paired_ratio": statistics.median(ratios)}
        rows.append(row)
    return rows


def paired_latency_rows(repository: Path, w: Workload, out: Path, rounds: int) -> list[dict[str, Any]]:
    """Batch-1 latency paired: per round, Kiln's in-process translator and CTranslate2 at one thread each
    translate the first 32 sentences one at a time (beam 4); rows with each round's p50 (ms) and their
    median, Kiln's with each round's ratio of p50s (``ratios``) and its median (``paired_ratio``)."""
    from bench.translation_engines import _requests, kiln_translator

    texts = w.texts[:LATENCY_SENTENCES]
    ct2 = _ctranslate2(w, out, inter_threads=1)
    translator, _ = kiln_translator(repository, w.model)
    p50: dict[str, list[float]] = {KILN_ONE: [], CT2_ONE: []}
    last: dict[str, list[str]] = {}

    def ctranslate2() -> float:
        latencies, last[CT2_ONE] = [], []
        for text in texts:
            start = time.perf_counter()
            last[CT2_ONE].append(ct2.translate([text], beam_size=4, max_length=MAX_LENGTH)[0][0])
            latencies.append(time.perf_counter() - start)
        return 1e3 * statistics.median(latencies)

    async def kiln() -> float:
        hyps, _, latencies = await _requests(translator, texts, 4, 1)
        last[KILN_ONE] = hyps
        return 1e3 * statistics.median(latencies)

    async def alternate() -> None:
        await translator.start()
        try:
            await kiln()  # warm-up, as each engine's rows are
            ctranslate2()
            for r in range(rounds):
                for name in (KILN_ONE, CT2_ONE) if r % 2 == 0 else (CT2_ONE, KILN_ONE):
                    p50[name].append(await kiln() if name == KILN_ONE else ctranslate2())
                log.info(
                    "paired batch-1 round %d: %s",
                    r + 1,
                    ", ".join(f"{n} {v[-1]:.2f} ms" for n, v in p50.items()),
                )
        finally:
            await translator.stop()

    asyncio.run(alternate())
    rows = []
    for name, values in p50.items():
        row = {
            "engine": name + PAIRED,
            "beam": 4,
            "concurrency": 1,
            "sentences": len(texts),
            "p50_ms": statistics.median(values),
            "rounds": values,
            "hyps": last[name],
        }
        if name == KILN_ONE:
            row["ratios"] = [ours / theirs for ours, theirs in zip(values, p50[CT2_ONE], strict=True)]
            row["paired_ratio"], row["against"] = statistics.median(row["ratios"]), CT2_ONE
        rows.append(row)
    return rows
