"""A gateway that starts while an export replaces an entry never serves new files under the old config.

It reads every entry's config.pbtxt and kiln.json first, then opens the graphs one by one: an export
swapping an entry in between (a retrained model) had it serve the new graph under the old config and
kiln.json (measured: a translator's decoder loaded from the new export beside the old kiln.json).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest


def _entry(root: Path, source: str) -> Path:
    """Entry ``m`` (``y = x``, batched) as an export of checkpoint ``source`` would leave it."""
    from onnx import TensorProto, helper

    from tests.repo_fixtures import write_onnx_entry

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
    )
    config = (
        'name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        'input [{ name: "x" data_type: TYPE_FP32 dims: [ 3 ] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [ 3 ] }]\n'
    )
    write_onnx_entry(root, graph, config)
    _say(root, source)
    return root


def _say(root: Path, source: str) -> None:
    kiln = {"kiln_format": 1, "name": "m", "version": "1", "source_checkpoint": {"sha256": source}}
    (root / "m" / "kiln.json").write_text(json.dumps(kiln), encoding="utf-8")


def _start(repository) -> tuple[str, bool]:
    """Start a backend over the scanned ``repository``: (m's load error, whether it is ready)."""
    from serving.execution.onnxruntime import OnnxRuntimeBackend
    from serving.execution.ort_options import OrtOptions

    backend = OnnxRuntimeBackend(repository, OrtOptions(lone_request_threads=0))

    async def body() -> tuple[str, bool]:
        await backend.start()
        try:
            return backend.load_error("m"), await backend.model_ready("m")
        finally:
            await backend.stop()

    return asyncio.run(body())


def test_an_entry_an_export_replaced_after_the_scan_fails_its_load_asking_for_a_restart(
    tmp_path: Path,
) -> None:
    from serving.execution.repository import Repository

    repository = Repository(_entry(tmp_path, "old"))
    _say(tmp_path, "new")  # the export's swap, after the gateway read config.pbtxt and kiln.json
    error, ready = _start(repository)
    assert "replaced while the gateway loaded it" in error and "restart the gateway" in error
    assert not ready


def test_an_entry_left_alone_loads(tmp_path: Path) -> None:
    from serving.execution.repository import Repository

    assert _start(Repository(_entry(tmp_path, "old"))) == ("", True)


def test_a_swap_between_reading_the_config_and_the_kiln_json_is_caught_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read config first, kiln.json second, the swap between them went unseen: both later reads agreed."""
    from serving.execution import repository as repository_module

    real = repository_module.read_config

    def swapped_after(directory: Path):
        config = real(directory)
        _say(tmp_path, "new")
        return config

    monkeypatch.setattr(repository_module, "read_config", swapped_after)
    repository = repository_module.Repository(_entry(tmp_path, "old"))
    monkeypatch.setattr(repository_module, "read_config", real)
    error, ready = _start(repository)
    assert "replaced while the gateway loaded it" in error and not ready
