"""Translation engines in-process, without HTTP, on the same sentences: Kiln's decoding engine over ONNX
Runtime (batch engine, scheduler path, batch-1 latency), the PyTorch reference beam search with and
without its KV cache, and CTranslate2 on the same weights. Each is warmed up, then timed as the median
of several passes (:func:`bench.translation_rows.median_pass`).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench.translation_rows import MAX_LENGTH, make_row, median_pass
from kiln.processes import end_with_parent


def pytorch_rows(
    ckpt,
    texts,
    refs,
    beams,
    threads,
    count,
    batch: int = 32,
    caches=(True, False),
    timed: bool = True,
    max_length: int = MAX_LENGTH,
) -> list[dict[str, Any]]:
    """The PyTorch reference beam search, 32 sentences a call, with its KV cache and without (``caches``);
    ``timed=False`` translates once, unwarmed, when only its translations count (the identity check).
    ``max_length``: the workload's (:attr:`bench.translation_rows.Workload.max_length`), as every row's.

    Laid out as Kiln's engine and CTranslate2 are, so the peer is measured at its best: tokenized ahead
    (each pass still pads and detokenizes inside its timing) and batched by source length
    (:func:`length_batches`), the translations returned in the order of ``texts``."""
    import torch

    from training.checkpoint import rebuild_model
    from training.data.tokenizer import TokenizerPair
    from training.decoding import beam_search

    torch.set_num_threads(threads)
    model = rebuild_model(ckpt)
    tok = TokenizerPair.from_dict(ckpt["tokenizers"])
    pad = model.step_spec()["pad_id"]
    sources = tok.encode_source(texts)
    parts = length_batches([len(s) for s in sources], batch)

    def translate(beam: int, use_cache: bool) -> list[str]:
        hyps = [""] * len(texts)
        for part in parts:
            width = max(len(sources[i]) for i in part)
            x = torch.tensor([sources[i] + [pad] * (width - len(sources[i])) for i in part])
            found = beam_search(model, x, beam_size=beam, max_length=max_length, use_cache=use_cache)
            for i, h in zip(part, found, strict=True):
                hyps[i] = tok.decode_target(h[0].tokens)
        return hyps

    rows = []
    for use_cache in caches:
        for beam in beams:
            run = lambda b=beam, c=use_cache: translate(b, c)  # noqa: E731
            hyps, seconds = median_pass(run, repeats=3) if timed else median_pass(run, 1, warmup=False)
            name = "pytorch (kv cache)" if use_cache else "pytorch (no cache)"
            rows.append(make_row(name, beam, batch, texts, hyps, refs, seconds, count))
    return rows


def length_batches(lengths: list[int], size: int) -> list[list[int]]:
    """Indices grouped into batches of at most ``size`` by source length, shortest first (the grouping of
    :func:`serving.decoding.offline.translate_in_batches` and CTranslate2's ``max_batch_size``)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[k : k + max(1, size)] for k in range(0, len(order), max(1, size))]


def pytorch_parallel_row(
    ckpt_path: Path, texts, refs, processes: int, count, beam: int = 4, max_length: int = MAX_LENGTH
) -> dict[str, Any] | None:
    """The PyTorch reference with its KV cache in ``processes`` processes of one thread each, started
    together on the same sentences (PyTorch's own layout for throughput on a few cores, as
    CTranslate2's ``inter_threads``): one row whose tokens/s and sentences/s are theirs together."""
    if processes < 2:
        return None
    with PyTorchProcesses(ckpt_path, texts, refs, processes, count, beam, max_length) as parallel:
        return parallel.row()


def pytorch_parallel_engine(processes: int) -> str:
    return f"pytorch (kv cache, {processes} processes x 1 thread)"


class PyTorchProcesses:
    """``processes`` spawned processes of one thread each, each holding the checkpoint loaded, that
    translate the same sentences with the PyTorch reference together whenever :meth:`row` asks: once
    for the separate row, or once a round where it alternates with the gateway
    (:mod:`bench.translation_paired`), without paying the processes' start each time."""

    def __init__(
        self, ckpt_path: Path, texts, refs, processes: int, count, beam: int = 4, max_length: int = MAX_LENGTH
    ) -> None:
        self.args = (texts, refs, beam, count, max_length)
        self.ckpt_path, self.processes = str(ckpt_path), processes
        self.engine = pytorch_parallel_engine(processes)

    def __enter__(self) -> PyTorchProcesses:
        import multiprocessing as mp
        from multiprocessing.managers import SyncManager

        ctx = mp.get_context("spawn")
        # every process ends with the bench, however it ends: a killed bench left the manager running for
        # ever (and with it the resource tracker, holding its semaphores in /dev/shm), and the pool
        # translating on (its initializer, _pytorch_load, sees to it there)
        self._manager = SyncManager(ctx=ctx)
        self._manager.start(end_with_parent)
        self._pool = ctx.Pool(self.processes, initializer=_pytorch_load, initargs=(self.ckpt_path,))
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.terminate()
        self._pool.join()
        self._manager.shutdown()

    def row(self) -> dict[str, Any]:
        """Every process warmed up, then timed (median of 3 passes) after a shared barrier, so their
        passes overlap: one row whose tokens/s and sentences/s are theirs together."""
        barrier = self._manager.Barrier(self.processes)
        rows = self._pool.starmap(_pytorch_worker, [(*self.args, barrier)] * self.processes)
        row = dict(rows[0])
        row["engine"] = self.engine
        for key in ("tokens_per_s", "sentences_per_s"):
            row[key] = sum(r[key] for r in rows)
        return row


_process_ckpt: list[Any] = []  # a PyTorchProcesses process's checkpoint, loaded once


def _pytorch_load(ckpt_path: str) -> None:
    from training.checkpoint import load_checkpoint

    end_with_parent()

    _process_ckpt[:] = [load_checkpoint(ckpt_path)]


def _pytorch_worker(texts, refs, beam: int, count, max_length: int, barrier) -> dict[str, Any]:
    barrier.wait()  # every process ready: their timed passes overlap
    rows = pytorch_rows(
        _process_ckpt[0], texts, refs, (beam,), 1, count, caches=(True,), max_length=max_length
    )
    return rows[0]


def ct2_layout(threads: int) -> str:
    """The name of CTranslate2's layout for throughput on ``threads`` threads (``inter 2, intra 1``)."""
    return f"inter {threads}, intra 1"


def ct2_layouts(threads: int) -> dict[str, tuple[int, int]]:
    """CTranslate2's layouts on ``threads`` threads, name -> (inter_threads, intra_threads): one
    single-thread translator per thread (its layout for throughput, measured best on 2 cores; the
    PyTorch reference's processes, Triton's instances and the gateway's workers get the same threads),
    and one thread (the peer of Kiln's one-thread engine and of batch-1 latency)."""
    multi = {ct2_layout(threads): (threads, 1)} if threads > 1 else {}
    return {**multi, "1 thread": (1, 1)}


def ctranslate2_rows(
    ckpt_path: Path, ckpt, texts, refs, beams, out: Path, count, threads: int, max_length: int = MAX_LENGTH
) -> list[dict[str, Any]]:
    """CTranslate2 at its best layout on ``threads`` threads and at one thread, fp32 and int8, plus
    batch-1 latency, each decoding at most ``max_length`` tokens (its ``max_decoding_length``)."""
    from bench.ctranslate import CT2Translator, convert

    model_dir = convert(ckpt_path, out / "ctranslate2", force=True)
    rows = []
    for compute in ("float32", "int8"):
        for layout, (inter, intra) in ct2_layouts(threads).items():
            translator = CT2Translator(
                model_dir, ckpt["tokenizers"], inter_threads=inter, intra_threads=intra, compute_type=compute
            )
            name = f"ctranslate2 {'fp32' if compute == 'float32' else compute} ({layout})"
            # tokenized ahead, as Kiln's engine rows are (each still detokenizes inside its timing)
            sources = translator.source_tokens(texts)
            for beam in beams:
                answers, seconds = median_pass(
                    lambda t=translator, b=beam, s=sources: t.translate_tokens(
                        s, beam_size=b, max_length=max_length
                    )
                )
                rows.append(make_row(name, beam, 32, texts, [t for t, _ in answers], refs, seconds, count))
            if layout == "1 thread" and compute == "float32":
                rows.append(_latency_row(name, texts, refs, count, translator, max_length))
    return rows


def _latency_row(engine: str, texts, refs, count, translator: Any, max_length: int, n: int = 32):
    """One sentence at a time, beam 4: the batch-1 latency row (p50 / p99 over ``n`` sentences)."""
    hyps, lat = [], []
    for text in texts[:n]:
        start = time.perf_counter()
        hyps.append(translator.translate([text], beam_size=4, max_length=max_length)[0][0])
        lat.append(time.perf_counter() - start)
    return make_row(engine, 4, 1, texts[:n], hyps, refs[:n], sum(lat), count, lat)


def kiln_translator(repository: Path, model: str) -> tuple[Any, dict[str, Any]]:
    """Kiln's Translator for ``model`` in-process over ONNX Runtime (one intra-op thread), the decoder's
    steps compiled as the gateway runs them, and its encoder and decoder runners."""
    from serving.decoding.native_decoder import open_runner
    from serving.decoding.translator import translator_from_entry
    from serving.execution.repository import Repository
    from serving.execution.version_policy import served_version

    entry = Repository(repository).get(model)
    block = entry.kiln["translator"]
    run = {  # as the gateway opens them: the version its policy serves, fused attention, steps compiled
        part: open_runner(
            Path(served_version(str(Path(repository) / block[part]))) / "model.onnx",
            decoder=part == "decoder",
        )
        for part in ("encoder", "decoder")
    }
    return translator_from_entry(entry.path, entry.kiln, run["encoder"], run["decoder"]), run


def engine_rows(
    repository: Path, model: str, texts, refs, beams, count, max_length: int = MAX_LENGTH
) -> list[dict[str, Any]]:
    """Kiln's decoding engine in-process over ONNX Runtime (one intra-op thread), without HTTP: the batch
    engine (32 sentences a call), the scheduler path (32 concurrent one-sentence requests) and batch-1,
    the decoder's steps compiled as the gateway runs them (serving.decoding.native_decoder), each
    decoding at most ``max_length`` tokens."""
    from serving.decoding.offline import translate_in_batches

    translator, run = kiln_translator(repository, model)
    spec = translator.schedulers[0].spec
    rows = []
    for beam in beams:
        config = translator.beam_config(_options(beam, max_length))
        ids = [i for k in range(0, len(texts), 32) for i in translator.source_ids(texts[k : k + 32])]

        def batches(config=config, ids=ids) -> list[str]:
            # batches of 32 by source length, as CTranslate2's translate_batch forms them (max_batch_size)
            results = translate_in_batches(run["encoder"], run["decoder"], spec, ids, config, 32)
            return translator.codec.decode([h[0].tokens for h in results])

        hyps, seconds = median_pass(batches)  # warmed up and timed as CTranslate2's rows
        rows.append(make_row("kiln engine (batch 32)", beam, 32, texts, hyps, refs, seconds, count))
    for beam, concurrency, hyps, elapsed, lat in asyncio.run(
        _scheduler_runs(translator, texts, beams, max_length)
    ):
        engine = "kiln engine (scheduler)"
        if concurrency == 1:
            rows.append(
                make_row(engine, beam, 1, texts[: len(hyps)], hyps, refs[: len(hyps)], elapsed, count, lat)
            )
        else:
            rows.append(make_row(engine, beam, concurrency, texts, hyps, refs, elapsed, count, lat))
    return rows


def _options(beam: int, max_length: int = MAX_LENGTH) -> Any:
    from serving.decoding.options import DecodingOptions

    return DecodingOptions(beam_size=beam, max_length=max_length)


async def _scheduler_runs(translator: Any, texts: list[str], beams, max_length: int) -> list[tuple]:
    """Through the Translator in-process: each text its own request from 32 coroutines, per beam; then
    32 texts one at a time at beam 4 (batch-1 latency). Each beam is warmed up by one short untimed pass
    first, as CTranslate2's rows are, and the run of median duration among three counts. Rows of (beam, concurrency, hyps, s, latencies)."""
    await translator.start()
    try:
        out = []
        for beam in beams:
            await _requests(translator, texts[:8], beam, 8, max_length)  # warm up
            runs = [await _requests(translator, texts, beam, 32, max_length) for _ in range(3)]
            out.append((beam, 32, *sorted(runs, key=lambda run: run[1])[1]))  # the median of three
        out.append((4, 1, *await _requests(translator, texts[:32], 4, 1, max_length)))
    finally:
        await translator.stop()
    return out


async def _requests(
    translator: Any, texts: list[str], beam: int, concurrency: int, max_length: int = MAX_LENGTH
):
    hyps: list[str | None] = [None] * len(texts)
    latencies: list[float] = []
    queue = list(range(len(texts)))[::-1]

    async def worker() -> None:
        while queue:
            i = queue.pop()
            t0 = time.perf_counter()
            hyps[i] = (await translator.translate([texts[i]], _options(beam, max_length)))[0][0].text
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return hyps, time.perf_counter() - start, latencies
