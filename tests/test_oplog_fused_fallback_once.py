"""A translator's fused step graph that does not open is one warning in the log, not one for each
session that opens it (the entry's batch session and every decode worker's: three lines a process with
two decode workers, a line more for each bucket)."""

from __future__ import annotations

import asyncio
import logging

from serving.execution.base import GraphChoice
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.ort_options import OrtOptions
from serving.execution.repository import Repository


def test_a_fused_graph_that_does_not_open_is_warned_about_once_however_many_decode_workers_open_it(
    exported_translator_models, tmp_path, caplog
) -> None:
    root, _ = exported_translator_models
    broken = tmp_path / "model.fused.onnx"
    broken.write_bytes(b"not an onnx graph")
    graph = GraphChoice(lambda _: broken, lambda _path, options: options)

    async def two_decode_workers() -> list:
        backend = OnnxRuntimeBackend(Repository(root / "model_repository"), OrtOptions())
        await backend.start()
        try:
            return [backend.runner("transformer_decoder", graph=graph) for _ in range(2)]
        finally:
            await backend.stop()

    with caplog.at_level(logging.WARNING, logger="serving.execution.onnxruntime"):
        runners = asyncio.run(two_decode_workers())
    assert all(run.model_file.name == "model.onnx" for run in runners)  # both serve the entry's own file
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING and "did not open" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in warned]
    assert "transformer_decoder" in warned[0].getMessage() and "model.fused.onnx" in warned[0].getMessage()
