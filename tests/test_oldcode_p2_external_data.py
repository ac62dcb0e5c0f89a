"""Models whose weights live in external data files (``onnx.save(..., save_as_external_data=True)``, and
every graph export writes over ``EXTERNAL_DATA_THRESHOLD``) reach the repository whole: each entry holds
its graphs' weights, counted among its artifacts, and the gateway serves them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export import onnx_export
from export.onnx_export import copy_graph
from serving.app import create_app
from serving.execution.base import InferRequest
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.ort_options import OrtOptions
from serving.execution.repository import Repository
from serving.settings import Settings
from tests.repo_fixtures import (
    SIZE,
    LiveServer,
    _export_classifiers,
    build_classifier_repository,
    held_grpc_port,
)


def _matmul_graph(path: Path, weights: np.ndarray) -> None:
    """``y = x @ weights`` saved with its weights in ``<path name>.data``, as the exporter names it."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", weights.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", weights.shape[1]])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, location=f"{path.name}.data", size_threshold=0)


def test_two_graphs_the_exporter_gave_one_data_file_name_keep_their_own_weights_side_by_side(tmp_path):
    """The decoder and its fused twin are both exported as ``dec.onnx`` (two work folders), so both name
    ``dec.onnx.data``; copied into one version directory, each answers with its own weights."""
    rng = np.random.default_rng(0)
    plain, fused = rng.standard_normal((2, 16, 8)).astype(np.float32)
    _matmul_graph(tmp_path / "work" / "dec.onnx", plain)
    _matmul_graph(tmp_path / "work" / "fused" / "dec.onnx", fused)
    version = tmp_path / "entry" / "1"
    version.mkdir(parents=True)
    copy_graph(tmp_path / "work" / "dec.onnx", version / "model.onnx")
    copy_graph(tmp_path / "work" / "fused" / "dec.onnx", version / "model.fused.onnx")
    assert sorted(p.name for p in version.iterdir()) == [
        "model.fused.onnx",
        "model.fused.onnx.data",
        "model.onnx",
        "model.onnx.data",
    ]
    x = rng.standard_normal((3, 16)).astype(np.float32)
    for name, weights in (("model.onnx", plain), ("model.fused.onnx", fused)):
        session = ort.InferenceSession(str(version / name), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ weights, rtol=1e-5, atol=1e-5)


def _answers(repository: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    async def body() -> dict[str, np.ndarray]:
        backend = OnnxRuntimeBackend(Repository(repository), OrtOptions(lone_request_threads=2))
        await backend.start()
        try:
            assert not backend._failed, backend._failed
            return (await backend.infer(InferRequest("lenet", {"images": images}))).outputs
        finally:
            await backend.stop()

    return asyncio.run(body())


def test_a_classifier_exported_with_external_data_keeps_its_weights_in_the_entry_and_serves(
    tmp_path, monkeypatch
):
    inline = build_classifier_repository(tmp_path / "inline")
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)  # as a model over 1 GB is exported
    external = _export_classifiers(tmp_path / "external", ("lenet",), SIZE, None)
    version = external / "lenet" / "1"
    assert (version / "model.onnx.data").is_file(), sorted(p.name for p in version.iterdir())
    artifacts = json.loads((external / "lenet" / "kiln.json").read_text())["artifacts"]
    assert "1/model.onnx.data" in artifacts, "a changed weights file must make the entry stale"
    images = np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 1), dtype=np.uint8)
    got, want = _answers(external, images), _answers(inline, images)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)


def test_a_translator_exported_with_external_data_translates_through_the_gateway(tmp_path, monkeypatch):
    """Encoder and decoder entries each hold the data of ``model.onnx`` and of its fused-attention twin
    (served by the compiled decoder step where it builds); the gateway translates with the PyTorch
    reference's scores."""
    from tests.test_translate_serving import (
        MAX_LENGTH,
        build_translator_repository,
        reference,
        texts_of_mixed_lengths,
    )

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
    repository, errors = build_translator_repository(tmp_path, ("transformer",))
    assert not errors, errors
    for entry in ("transformer_encoder", "transformer_decoder"):
        names = {p.name for p in (repository / entry / "1").iterdir()}
        assert {"model.onnx", "model.onnx.data"} <= names, (entry, sorted(names))
        assert {"model.fused.onnx", "model.fused.onnx.data"} <= names or "model.fused.onnx" not in names
    texts = texts_of_mixed_lengths(3)
    expected = reference(tmp_path, "transformer", texts, beam=2)
    with held_grpc_port() as grpc_port:
        settings = Settings(model_repository=repository, grpc_port=grpc_port, reuse_port=True)
        with LiveServer(create_app(settings)) as server:
            url = f"http://{server.url}/v1/models/transformer/translate"
            body = {"texts": texts, "beam_size": 2, "max_length": MAX_LENGTH, "return_scores": True}
            got = httpx.post(url, json=body, timeout=60)
    assert got.status_code == 200, got.text
    scores = [t["hypotheses"][0]["normalized_score"] for t in got.json()["translations"]]
    assert scores == pytest.approx([score for _, score in expected], abs=1e-4)
