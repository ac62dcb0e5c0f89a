"""``kiln_queue_depth{model}`` reads every request waiting for the model: summed over the batchers of
each version it serves (the version served last took the one series over, and the other version's
backlog never showed), and a translator's requests waiting to join a decode batch across its decode
workers (in no series at all: a translator backed up unseen until its 429s)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import model_config_pb2

from serving.decoding import translator_pool as pool_module
from serving.decoding.options import DecodingOptions
from serving.decoding.scheduler import DecodingScheduler
from serving.decoding.scheduler_config import SchedulerConfig
from serving.decoding.translator import Translator
from serving.decoding.translator_pool import TranslatorPool
from serving.execution.batcher import BatchPolicy, DynamicBatcher
from serving.metrics import MULTIPROCESS_ENV, GatewayMetrics
from tests.test_batcher import Recorder, rows
from tests.test_oldcode_g_translator_queue import _Codec
from tests.test_scheduler import SPEC, FakeDecoder, fake_encoder
from tests.waiting import until

ROOT = Path(__file__).resolve().parents[1]  # where `tests` imports from, in a process of its own


def _depth(metrics: GatewayMetrics, model: str) -> float | None:
    return metrics.sample("kiln_queue_depth", model=model)


def test_a_model_served_in_two_versions_shows_the_queue_of_each() -> None:
    """Versions 1 and 2 of ``m`` each get their batcher, named by the model (as the embedded backend
    makes them); version 1's instance is held and three requests wait behind it."""
    metrics = GatewayMetrics()
    gate = threading.Event()
    held, idle = Recorder(gate), Recorder()
    policy = BatchPolicy(max_batch_size=1, max_queue_delay_s=0.0)

    async def body() -> tuple[list[float | None], list[float | None]]:
        one = DynamicBatcher("m", held, policy, observer=metrics, version="1")
        two = DynamicBatcher("m", idle, policy, observer=metrics, version="2")
        one.start()
        two.start()
        try:
            tasks = [asyncio.create_task(one.submit(rows(0, 1)))]
            await until(held.entered.is_set)
            tasks += [asyncio.create_task(one.submit(rows(i, 1))) for i in (1, 2, 3)]
            await until(lambda: one.queue_depth == 3)
            busy = [_depth(metrics, "m")]
            tasks.append(asyncio.create_task(two.submit(rows(9, 1))))  # version 2 answers at once
            await tasks[-1]
            busy.append(_depth(metrics, "m"))
            gate.set()
            await asyncio.gather(*tasks)
            drained = [_depth(metrics, "m")]
        finally:
            gate.set()
            await one.stop(5)
            await two.stop(5)
        return busy, drained

    busy, drained = asyncio.run(body())
    assert busy == [3.0, 3.0]  # was [0.0, 0.0]: version 2's empty queue
    assert drained == [0.0]


def _pool_with(
    translator: Translator, metrics: GatewayMetrics, setattr_: Callable[..., None]
) -> TranslatorPool:
    """A pool over one ``t`` entry whose translator is ``translator`` (its repository's parts faked
    through ``setattr_``: pytest's monkeypatch, or plain setattr in a process of its own)."""
    setattr_(pool_module, "translator_from_entry", lambda *args, **options: translator)
    setattr_(pool_module, "_capped", lambda config, *args: config)
    setattr_(pool_module, "_runner_pair", lambda *args: (None, None))
    entry = SimpleNamespace(
        name="t",
        task="translate",
        path=None,
        kiln={"translator": {"encoder": "e", "decoder": "d"}},
        config=model_config_pb2.ModelConfig(max_batch_size=8),
    )
    steps = {n: SimpleNamespace(name=n, kiln={}) for n in ("e", "d")}
    repository = SimpleNamespace(entries={"t": entry}, get=steps.__getitem__)
    return TranslatorPool(repository, observer=metrics)


def _scraped_depth(metrics: GatewayMetrics, model: str) -> float | None:
    """``kiln_queue_depth{model}`` in a scrape (with shared metrics: every worker's, from their files)."""
    found = [
        sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
        if sample.name == "kiln_queue_depth" and sample.labels.get("model") == model
    ]
    return sum(found) if found else None


def scrapes_while_a_translator_waits(setattr_: Callable[..., None] = setattr) -> tuple[Any, Any]:
    """Two decode workers, each holding one request in a step its scripted decoder keeps waiting; three
    more requests wait to join a batch: ``kiln_queue_depth{model="t"}`` scraped then, and once all
    are answered."""
    metrics = GatewayMetrics()
    decoders = [FakeDecoder() for _ in range(2)]
    for decoder in decoders:
        decoder.gate = threading.Event()
    config = SchedulerConfig(max_rows=1, max_queue=8)
    schedulers = [
        DecodingScheduler(f"t#{i}", SPEC, fake_encoder, d, config, observer=metrics, model="t")
        for i, d in enumerate(decoders)
    ]
    translator = Translator("t", _Codec(), schedulers)
    pool = _pool_with(translator, metrics, setattr_)
    options = DecodingOptions(beam_size=1, max_length=6)

    async def body() -> tuple[Any, Any]:
        await pool.start(lambda *args, **kwargs: None)
        tasks = []
        try:
            for i in range(2):  # one running on each worker
                tasks.append(asyncio.create_task(translator.translate([f"run{i}"], options)))
                await until(lambda n=i + 1: sum(s.active_rows for s in schedulers) == n)
            for i in range(3):
                tasks.append(asyncio.create_task(translator.translate([f"wait{i}"], options)))
                await until(lambda n=i + 1: sum(s.queued for s in schedulers) == n)
            waiting = _scraped_depth(metrics, "t")
            for decoder in decoders:
                decoder.gate.set()
            answers = await asyncio.gather(*tasks)
            assert len(answers) == 5
            return waiting, _scraped_depth(metrics, "t")
        finally:
            for decoder in decoders:
                decoder.gate.set()
            await pool.stop(1.0)

    return asyncio.run(body())


def test_requests_waiting_for_a_translators_decode_workers_show_in_its_queue_depth(monkeypatch) -> None:
    monkeypatch.delenv(MULTIPROCESS_ENV, raising=False)
    assert scrapes_while_a_translator_waits(monkeypatch.setattr) == (3.0, 0.0)  # was (None, None)


def test_with_workers_sharing_metrics_a_translators_queue_depth_is_published_too(tmp_path: Path) -> None:
    """``--workers N``: each worker publishes its queues to the shared files, which a scrape sums (a
    process of its own: prometheus_client picks its file-backed values as it is imported)."""
    code = "from tests.test_oldcode_k_queue_depth import scrapes_while_a_translator_waits as s; print(s())"
    env = {**os.environ, MULTIPROCESS_ENV: str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "(3.0, 0.0)"  # was (None, None)


def test_a_queue_watched_again_counts_once() -> None:
    """A queue's reader given twice (a translator started again: its schedulers' start is idempotent)
    is one queue, not two."""
    metrics = GatewayMetrics()
    scheduler = DecodingScheduler("t", SPEC, fake_encoder, FakeDecoder(), SchedulerConfig())
    translator = Translator("t", _Codec(), [scheduler])
    scheduler._waiting.extend([object(), object()])  # two requests waiting (never run: no thread)
    metrics.watch_queue_depth("t", translator.waiting)
    metrics.watch_queue_depth("t", translator.waiting)
    assert _depth(metrics, "t") == 2.0
