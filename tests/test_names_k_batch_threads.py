"""Batcher threads keep distinct OS names across models sharing a prefix: Linux keeps 15 bytes of a
thread's name, and ``kiln-batch-<model>-<instance>`` left ``kiln-batch-resn`` for resnet18 and
resnet18_int8 alike in ``top -H``, py-spy and perf."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from serving.execution.batch_policy import BatchPolicy
from serving.execution.batcher import DynamicBatcher, batch_thread_name
from serving.execution.onnxruntime import batch_threads
from serving.threads import NAME_BYTES

NAMES = ("resnet18", "resnet18_int8", "resnet18_int8")  # the last: a second version of the same model


def _os_name(thread: threading.Thread) -> str:
    return Path(f"/proc/self/task/{thread.native_id}/comm").read_text().strip()


@pytest.mark.skipif(sys.platform != "linux", reason="/proc/<pid>/task/<tid>/comm is Linux's")
def test_models_sharing_a_prefix_get_distinct_os_thread_names() -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        batchers = [
            DynamicBatcher(name, lambda instance, inputs: {"y": inputs["x"]}, BatchPolicy(max_batch_size=4))
            for name in NAMES
        ]
        for batcher in batchers:
            batcher.start()
        try:  # answered requests: each instance thread has named itself
            await asyncio.gather(*(b.submit({"x": np.zeros((1, 1), np.float32)}) for b in batchers))
            seen = [_os_name(thread) for b in batchers for thread in b._threads]
            return seen, [name for b in batchers for name in b.thread_names]
        finally:
            await asyncio.gather(*(b.stop(grace_s=5) for b in batchers))

    seen, names = asyncio.run(scenario())
    assert seen == names  # what the start-up line prints is what the OS shows
    assert len(set(seen)) == len(NAMES), seen  # was ["kiln-batch-resn"] * 3
    assert all(name.startswith("kbat") for name in seen)


def test_the_numbers_stay_whole_and_the_model_name_is_cut() -> None:
    assert batch_thread_name(0, 1, "resnet18") == "kbat0.1-resnet1"
    assert batch_thread_name(123, 45, "resnet18_int8") == "kbat123.45-resn"
    assert batch_thread_name(0, 0, "é" * 8) == "kbat0.0-ééé"  # whole characters within 15 bytes
    assert len(batch_thread_name(7, 3, "x" * 40).encode()) == NAME_BYTES


def test_the_start_up_line_maps_each_os_name_to_its_model_version() -> None:
    def model(*names: str) -> SimpleNamespace:
        return SimpleNamespace(batcher=SimpleNamespace(thread_names=list(names)))

    models = {
        ("resnet18_int8", "1"): model("kbat1.0-resnet1", "kbat1.1-resnet1"),
        ("resnet18", "1"): model("kbat0.0-resnet1"),
    }
    assert batch_threads(models) == (  # type: ignore[arg-type]
        "resnet18 v1: kbat0.0-resnet1; resnet18_int8 v1: kbat1.0-resnet1, kbat1.1-resnet1"
    )


def _identity_repository(root: Path) -> Path:
    """resnet18 and resnet18_int8: ``y = x``, batched (one execution thread each)."""
    from onnx import TensorProto, helper

    from tests.repo_fixtures import write_onnx_entry

    for name in ("resnet18", "resnet18_int8"):
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            name,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        )
        config = (
            f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
            'input [{ name: "x" data_type: TYPE_FP32 dims: [ 3 ] }]\n'
            'output [{ name: "y" data_type: TYPE_FP32 dims: [ 3 ] }]\n'
        )
        write_onnx_entry(root, graph, config)
    return root


@pytest.mark.skipif(sys.platform != "linux", reason="/proc/<pid>/task/<tid>/comm is Linux's")
def test_the_backends_start_up_line_names_each_models_batch_threads(tmp_path: Path, caplog) -> None:
    from serving.execution.onnxruntime import OnnxRuntimeBackend
    from serving.execution.ort_options import OrtOptions
    from serving.execution.repository import Repository

    backend = OnnxRuntimeBackend(
        Repository(_identity_repository(tmp_path)), OrtOptions(lone_request_threads=0)
    )

    async def body() -> dict[str, list[str]]:
        await backend.start()
        try:
            seen = {}
            for name in ("resnet18", "resnet18_int8"):
                batcher = backend._models[(name, "1")].batcher
                await batcher.submit({"x": np.zeros((1, 3), np.float32)})  # its thread has named itself
                seen[name] = [_os_name(thread) for thread in batcher._threads]
            return seen
        finally:
            await backend.stop()

    with caplog.at_level("INFO", logger="serving.execution.onnxruntime"):
        seen = asyncio.run(body())
    assert seen["resnet18"] != seen["resnet18_int8"], seen  # both were ["kiln-batch-resn"]
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("batch threads "))
    for name, threads in seen.items():
        assert f"{name} v1: {', '.join(threads)}" in line, line
