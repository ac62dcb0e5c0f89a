"""A model whose version policy serves several versions, the newest of which fails its load: a call
without a version reaches the newest version that loaded, as Triton answers "latest" (the newest READY
version), and the broken version is still reported, alone, as not ready with its reason."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from serving.execution.base import InferRequest
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.ort_options import OrtOptions
from serving.execution.repository import Repository
from serving.protocol.repository_index import repository_index
from tests.repo_fixtures import write_onnx_entry

CONFIG = """name: "double"
platform: "onnxruntime_onnx"
max_batch_size: 4
version_policy { latest { num_versions: 2 } }
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""


def _repository(root: Path) -> Path:
    """``double`` version 1 (x + x), and a version 3 whose model.onnx is no ONNX file."""
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "double",
        [value("x", TensorProto.FLOAT, ["batch", 2])],
        [value("y", TensorProto.FLOAT, ["batch", 2])],
    )
    write_onnx_entry(root, graph, CONFIG)
    (root / "double" / "3").mkdir()
    (root / "double" / "3" / "model.onnx").write_bytes(b"not an onnx file")
    return root


def _serve(root: Path, calls):
    backend = OnnxRuntimeBackend(Repository(_repository(root)), OrtOptions(lone_request_threads=0))

    async def body():
        await backend.start()
        try:
            return await calls(backend)
        finally:
            await backend.stop()

    return asyncio.run(body())


def test_a_call_without_a_version_is_served_by_the_newest_version_that_loaded(tmp_path):
    async def calls(backend):
        return await backend.infer(InferRequest("double", {"x": np.array([[1.0, 2.0]], np.float32)}))

    response = _serve(tmp_path, calls)
    assert response.version == "1"
    assert response.outputs["y"].tolist() == [[2.0, 4.0]]


def test_the_model_is_ready_without_a_version_and_its_broken_version_alone_is_not(tmp_path):
    async def calls(backend):
        ready = [await backend.model_ready("double", v) for v in ("", "1", "3")]
        return ready, await repository_index(backend)

    ready, index = _serve(tmp_path, calls)
    assert ready == [True, True, False]
    states = {entry["version"]: entry for entry in index}
    assert states["1"]["state"] == "READY"
    assert states["3"]["state"] == "UNAVAILABLE"
    assert "3/model.onnx" in states["3"]["reason"]


def test_readiness_of_a_version_the_model_does_not_have_says_so_not_another_versions_error(tmp_path):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import Settings

    settings = Settings(model_repository=_repository(tmp_path), grpc_port=0, lone_request_threads=0)
    with TestClient(create_app(settings)) as client:
        absent = client.get("/v2/models/double/versions/2/ready")
        broken = client.get("/v2/models/double/versions/3/ready")
        latest = client.get("/v2/models/double/ready")
    assert absent.status_code == 400
    assert absent.json()["error"] == "model 'double' has no version '2'; available: ['1', '3']"
    assert broken.status_code == 400 and "3/model.onnx" in broken.json()["error"]
    assert latest.status_code == 200
