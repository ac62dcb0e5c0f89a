"""Every registered classifier family, exported and served: tritonclient over HTTP and gRPC, unchanged,
sees it live and ready, reads its metadata, and gets exactly what ONNX Runtime computes directly."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from serving.app import create_app
from serving.settings import Settings
from tests.classifier_exports import CHANNELS, LABELS, SIZE
from tests.repo_fixtures import LiveServer, held_grpc_port
from training.models import list_models

CLASSIFIERS = list_models("classify")


@pytest.fixture(scope="module")
def repository(exported_classifiers):
    return exported_classifiers[0]  # the export tests' repository: every family, exported once


@pytest.fixture(scope="module")
def server(repository):
    with held_grpc_port() as grpc_port:
        settings = Settings(
            model_repository=repository, grpc_port=grpc_port, reuse_port=True, intra_op_threads=1
        )
        with LiveServer(create_app(settings)) as live:
            yield live, settings.grpc_port


def _direct(repository, name: str, images: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(repository / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(["logits", "probabilities"], {"images": images})


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_tritonclient_serves_every_classifier_like_onnxruntime(repository, server, name, protocol):
    live, grpc_port = server
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(live.url if protocol == "http" else f"127.0.0.1:{grpc_port}")
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
        meta = client.get_model_metadata(name)
        inputs = (
            meta["inputs"]
            if protocol == "http"
            else [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs]
        )
        assert inputs == [{"name": "images", "datatype": "UINT8", "shape": [-1, SIZE, SIZE, CHANNELS]}]
        images = np.random.default_rng(3).integers(0, 256, (3, SIZE, SIZE, CHANNELS), dtype=np.uint8)
        tensor = module.InferInput("images", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        result = client.infer(name, [tensor])
        logits, probabilities = _direct(repository, name, images)
        np.testing.assert_array_equal(result.as_numpy("logits"), logits)
        np.testing.assert_array_equal(result.as_numpy("probabilities"), probabilities)
        assert probabilities.shape == (3, len(LABELS))
    finally:
        client.close()
