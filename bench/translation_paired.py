"""The gateway's translation targets measured next to CTranslate2, round by round.

On a shared 2-core VM the machine's speed drifts over minutes: CTranslate2's best layout read 7 699,
8 970, 8 980 and 13 741 tokens/s in four runs of the same code, while the gateway and CTranslate2 rows
of one run are minutes apart, so their ratio mixed the code with the minute each ran in (0.29x and
0.50x for the same gateway code). Here the gateway (fp32 and its int8 entry, c=32, beam 4, the bench's
layout) and CTranslate2 fp32 at its best layout (one single-thread translator per ``--threads`` thread:
inter 2, intra 1 on 2 cores) alternate ``rounds`` times over the
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.servers import gateway_cmd
from bench.translation_engines import PyTorchProcesses, ct2_layout
from bench.translation_gateway import (
    TARGET_CONCURRENCY,
    _gateway_run,
    gateway_engine,
    run_client,
    steady_rounds,
)
from bench.translation_rows import MAX_LENGTH, Workload, median_pass
from kiln.processes import running
from serving.triton.ports import free_port

log = logging.getLogger(__name__)

CT2_ONE = "ctranslate2 fp32 (1 thread)"


def ct2_best(threads: int) -> str:
    """CTranslate2 fp32's row at its layout for throughput on ``threads`` threads
    (:func:`bench.translation_engines.ct2_layouts`)."""
    return f"ctranslate2 fp32 ({ct2_layout(threads)})" if threads > 1 else CT2_ONE


CT2_BEST = ct2_best(2)  # on the 2 cores the bench was tuned on
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
                PyTorchProcesses(w.checkpoint, w.texts, w.refs, threads, w.count, beam, w.max_length)
            )
        return _paired_rows(repository, w, out, threads, workers, rounds, beam, pytorch, w.max_length)


def _paired_rows(
    repository: Path,
    w: Workload,
    out: Path,
    threads: int,
    workers: int,
    rounds: int,
    beam: int,
    pytorch: PyTorchProcesses | None,
    max_length: int = MAX_LENGTH,
) -> list[dict[str, Any]]:
    """:func:`paired_rows` with the PyTorch reference's processes (where they run) already started,
    every engine decoding at most ``max_length`` tokens (the workload's)."""
    translator = _ctranslate2(w, out, inter_threads=threads)
    sources = translator.source_tokens(w.texts)
    entries = _gateway_entries(repository, w.model, workers)
    passes = steady_rounds(len(w.texts), TARGET_CONCURRENCY)
    http, grpc = free_port(), free_port()
    url = f"http://127.0.0.1:{http}"
    best = ct2_best(threads)
    turns = _Turns(
        w, beam, translator, sources, pytorch, url, entries, passes, best=best, max_length=max_length
    )
    with running(
        gateway_cmd(repository, http, grpc, threads, workers=workers),
        f"{url}/v2/health/ready",
        log_path=out / "logs" / f"gateway-paired-{w.model}.log",
    ):
        tokens = _alternate_throughput(turns, rounds)
    return _throughput_rows(turns, tokens)


def _gateway_entries(repository: Path, model: str, workers: int) -> dict[str, str]:
    """The gateway's engines measured (row name -> repository entry): ``model``, and its int8 entry
    where export wrote one."""
    int8 = f"{model}_int8" if (Path(repository) / f"{model}_int8").is_dir() else None
    entries = {gateway_engine("", workers): model}
    if int8:
        entries[gateway_engine("int8 entry", workers)] = int8
    return entries


@dataclass
class _Turns:
    """Each engine's turn in a throughput round: its tokens/s, its translations kept in ``last`` (each
    engine's last round, read for agreement)."""

    w: Workload
    beam: int
    translator: Any  # CTranslate2 at its best layout
    sources: Any  # its tokens of ``w.texts``
    pytorch: PyTorchProcesses | None
    url: str  # the gateway's
    entries: dict[str, str]  # the gateway's engines: row name -> repository entry
    passes: int  # of the sentences through the gateway in one turn
    last: dict[str, list[str]] = field(default_factory=dict)
    best: str = CT2_BEST  # ``translator``'s row name: CTranslate2 at its layout on the bench's threads
    max_length: int = MAX_LENGTH  # most tokens a sentence, every engine (the workload's)

    @property
    def references(self) -> list[str]:
        """What the gateway is compared against: CTranslate2's best layout, then the PyTorch reference."""
        return [self.best] + ([self.pytorch.engine] if self.pytorch else [])

    def ctranslate2(self) -> float:
        """CTranslate2's tokens/s: the median of three passes over the sentences, all at once."""
        answers, seconds = median_pass(
            lambda: self.translator.translate_tokens(
                self.sources, beam_size=self.beam, max_length=self.max_length
            ),
            repeats=3,
            warmup=False,
        )
        self.last[self.best] = [text for text, _ in answers]
        return self.w.count(self.last[self.best]) / seconds

    def reference(self, name: str) -> float:
        """The tokens/s of reference ``name``: CTranslate2 or the PyTorch reference's processes."""
        if name == self.best:
            return self.ctranslate2()
        row = self.pytorch.row()
        self.last[name] = row["hyps"]
        return row["tokens_per_s"]

    def gateway(self, name: str) -> float:
        """The tokens/s of the gateway's engine ``name``: ``passes`` passes over the sentences at c=32."""
        served: list[str] = []  # every answer: a marker in ``hyps`` is no translation to count
        hyps, seconds, _ = run_client(
            _gateway_run(
                self.url,
                self.entries[name],
                self.w.texts,
                self.beam,
                TARGET_CONCURRENCY,
                self.passes,
                served,
                self.max_length,
            )
        )
        self.last[name] = hyps
        return self.w.count(served) / seconds


def _alternate_throughput(turns: _Turns, rounds: int) -> dict[str, list[float]]:
    """Every engine's tokens/s in each of ``rounds`` rounds (the gateway's engines, then the references),
    after a warm-up; who goes first alternates round by round."""
    entries, references = list(turns.entries), turns.references
    tokens: dict[str, list[float]] = {name: [] for name in (*entries, *references)}
    for name in entries:  # warm-up: every worker's sessions and buffers at the load measured
        turns.gateway(name)
    turns.ctranslate2()
    for r in range(rounds):
        order = [*entries, *references] if r % 2 == 0 else [*references, *entries]  # who goes first
        for name in order:
            tokens[name].append(turns.reference(name) if name in references else turns.gateway(name))
        log.info(
            "paired round %d: %s",
            r + 1,
            ", ".join(f"{n} {v[-1]:.0f} tokens/s" for n, v in tokens.items()),
        )
    return tokens


def _throughput_rows(turns: _Turns, tokens: dict[str, list[float]]) -> list[dict[str, Any]]:
    """One row per engine from its rounds' tokens/s; the gateway's with their ratios to CTranslate2's
    rounds and (``versus``) to the PyTorch reference's."""
    rows = []
    for name, values in tokens.items():
        row = _row(
            name, turns.beam, TARGET_CONCURRENCY, len(turns.w.texts), "tokens_per_s", values, turns.last[name]
        )
        if name in turns.entries:
            row.update(_against(values, tokens, turns.best))
            row["versus"] = {other: _ratios(values, tokens[other]) for other in turns.references[1:]}
        rows.append(row)
    return rows


def _row(
    name: str, beam: int, concurrency: int, sentences: int, key: str, values: list[float], hyps: list[str]
) -> dict[str, Any]:
    """An engine's paired row: the median of its rounds' ``key`` (each round's in ``rounds``)."""
    return {
        "engine": name + PAIRED,
        "beam": beam,
        "concurrency": concurrency,
        "sentences": sentences,
        key: statistics.median(values),
        "rounds": values,
        "hyps": hyps,
    }


def _ratios(ours: list[float], theirs: list[float]) -> dict[str, Any]:
    """Each round's ratio of ``ours`` to ``theirs`` (``ratios``) and their median (``paired_ratio``)."""
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    return {"ratios": ratios, "paired_ratio": statistics.median(ratios)}


def _against(values: list[float], measured: dict[str, list[float]], engine: str) -> dict[str, Any]:
    """:func:`_ratios` to ``engine``'s rounds, naming it (``against``): what the targets read."""
    return {**_ratios(values, measured[engine]), "against": engine}


def paired_latency_rows(repository: Path, w: Workload, out: Path, rounds: int) -> list[dict[str, Any]]:
    """Batch-1 latency paired: per round, Kiln's in-process translator and CTranslate2 at one thread each
    translate the first 32 sentences one at a time (beam 4); rows with each round's p50 (ms) and their
    median, Kiln's with each round's ratio of p50s (``ratios``) and its median (``paired_ratio``)."""
    from bench.translation_engines import kiln_translator

    texts = w.texts[:LATENCY_SENTENCES]
    ct2 = _ctranslate2(w, out, inter_threads=1)
    translator, _ = kiln_translator(repository, w.model)
    last: dict[str, list[str]] = {}
    p50 = asyncio.run(_alternate_latency(translator, ct2, texts, rounds, last, w.max_length))
    rows = []
    for name, values in p50.items():
        row = _row(name, 4, 1, len(texts), "p50_ms", values, last[name])
        if name == KILN_ONE:
            row.update(_against(values, p50, CT2_ONE))
        rows.append(row)
    return rows


def _ct2_p50(ct2: Any, texts: list[str], last: dict[str, list[str]], max_length: int) -> float:
    """CTranslate2's p50 (ms) over ``texts`` translated one at a time, beam 4."""
    latencies, last[CT2_ONE] = [], []
    for text in texts:
        start = time.perf_counter()
        last[CT2_ONE].append(ct2.translate([text], beam_size=4, max_length=max_length)[0][0])
        latencies.append(time.perf_counter() - start)
    return 1e3 * statistics.median(latencies)


async def _kiln_p50(translator: Any, texts: list[str], last: dict[str, list[str]], max_length: int) -> float:
    """Kiln's in-process translator's p50 (ms) over ``texts`` sent one at a time, beam 4."""
    from bench.translation_engines import _requests

    hyps, _, latencies = await _requests(translator, texts, 4, 1, max_length)
    last[KILN_ONE] = hyps
    return 1e3 * statistics.median(latencies)


async def _alternate_latency(
    translator: Any, ct2: Any, texts: list[str], rounds: int, last: dict[str, list[str]], max_length: int
) -> dict[str, list[float]]:
    """Each engine's p50 (ms) in each of ``rounds`` rounds, after a warm-up; who goes first alternates.
    Each engine's translations of its last round are kept in ``last``."""
    p50: dict[str, list[float]] = {KILN_ONE: [], CT2_ONE: []}
    await translator.start()
    try:
        await _kiln_p50(translator, texts, last, max_length)  # warm-up, as each engine's rows are
        _ct2_p50(ct2, texts, last, max_length)
        for r in range(rounds):
            for name in (KILN_ONE, CT2_ONE) if r % 2 == 0 else (CT2_ONE, KILN_ONE):
                p50[name].append(
                    await _kiln_p50(translator, texts, last, max_length)
                    if name == KILN_ONE
                    else _ct2_p50(ct2, texts, last, max_length)
                )
            log.info(
                "paired batch-1 round %d: %s",
                r + 1,
                ", ".join(f"{n} {v[-1]:.2f} ms" for n, v in p50.items()),
            )
    finally:
        await translator.stop()
    return p50
