"""The start-up line saying a translator's decoder steps compiled names its repository entry, once
however many decode workers compile it: it was one line a worker, each naming the weight store's
temporary copy (``/tmp/kiln-weights-.../<hash>/model.onnx``), so that two translators' lines, or a
decoder's two workers', could not be told apart."""

from __future__ import annotations

import asyncio
import logging

from serving.decoding.scheduler_config import SchedulerConfig
from serving.decoding.translator_pool import TranslatorPool
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.ort_options import OrtOptions
from serving.execution.repository import Repository


def test_a_decoder_s_compiled_steps_are_one_info_line_naming_its_entry_whatever_its_decode_workers(
    exported_translator_models, caplog
) -> None:
    root, _ = exported_translator_models
    repository = Repository(root / "model_repository")

    async def started_with_two_decode_workers() -> dict[str, int]:
        backend = OnnxRuntimeBackend(repository, OrtOptions())
        await backend.start()
        pool = TranslatorPool(repository, scheduler_config=SchedulerConfig(workers=2))
        try:
            await pool.start(backend.runner)
            return {name: len(t.schedulers) for name, t in pool.translators.items()}
        finally:
            await pool.stop(1.0)
            await backend.stop()

    with caplog.at_level(logging.INFO, logger="serving.decoding.native_decoder"):
        workers = asyncio.run(started_with_two_decode_workers())
    assert workers.get("transformer") == 2, workers
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.INFO and "steps compiled" in r.getMessage()
    ]
    assert "decoder transformer_decoder: steps compiled (ONNX Runtime C API)" in lines, lines
    assert len(lines) == len(set(lines)), lines  # one a decoder, not one a decode worker
    assert not [line for line in lines if "kiln-weights" in line], lines
