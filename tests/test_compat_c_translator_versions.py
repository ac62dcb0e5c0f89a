"""A KServe infer naming one of a translator's versions is counted under that version whole: its outcome
was (``observed``), but its queue, compute, texts and last inference went to the latest version's, so
that version's statistics had successes without executions and perf_analyzer ``-x 1`` read zeros.

Every version of a translator decodes with the same weights, in the gateway as in Triton's ``<name>``
model: a translator's version directories hold no weights (``model.py`` in Triton's layout), and both
decode with the latest served version of its ``<name>_encoder`` / ``<name>_decoder`` entries."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np

from serving.execution.base import InferRequest
from serving.metrics import GatewayMetrics
from tests.test_compat_c_thread_names import _entry
from tests.test_scheduler import FakeDecoder, fake_encoder


def _translated(metrics: GatewayMetrics, version: str) -> list[float]:
    return [
        metrics.sample(name, model="t", version=version) or 0.0
        for name in ("kiln_executed_requests_total", "kiln_translated_texts_total")
    ]


def test_a_request_for_an_older_translator_version_is_counted_under_that_version(tmp_path) -> None:
    from serving.decoding.translator import translator_from_entry

    metrics = GatewayMetrics()
    metrics.repository = SimpleNamespace(metadata=lambda model: SimpleNamespace(versions=["1", "2"]))
    translator = translator_from_entry(*_entry(tmp_path, "t"), fake_encoder, FakeDecoder(), observer=metrics)
    text = np.array([[b"a b"], [b"c"]], dtype=np.object_)

    async def served() -> None:
        await translator.start()
        try:
            await translator.infer(InferRequest("t", {"text": text}, version="1"))
            await translator.infer(InferRequest("t", {"text": text[:1]}))  # no version: the latest
        finally:
            await translator.stop(5)

    asyncio.run(served())
    assert _translated(metrics, "1") == [1.0, 2.0]  # was [0.0, 0.0]
    assert _translated(metrics, "2") == [1.0, 1.0]  # was [2.0, 3.0]: version 1's request among them
