"""The gateway in front of a real Triton (``--model-control-mode explicit``) that loads a model after the
gateway last read its index: the gateway's own routes serve it at once (KServe v2 infer over HTTP and
gRPC, its metadata), as the ``triton`` backend's ``infer`` does. Each read the model list alone first
and answered 404 "not loaded" until the next index check."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from serving.app import create_app
from serving.execution.triton import TritonBackend
from serving.settings import Settings
from serving.triton import TritonServer
from tests.repo_fixtures import LiveServer, held_grpc_port
from tests.test_triton_backend_faults import DOUBLE, explicit_triton

pytestmark = pytest.mark.triton
LATER = ("over_http", "over_grpc", "described")  # models Triton does not load at start, one a test
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}


@pytest.fixture(scope="module")
def explicit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with explicit_triton(tmp_path_factory, "routes", dict.fromkeys(("double", *LATER), DOUBLE)) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(
    explicit: TritonServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Counter]]:
    """The gateway's HTTP and gRPC addresses and the calls its backend made to Triton, by method; its
    index check not due during the tests."""
    backend, calls = TritonBackend(explicit.grpc_url, resync_interval_s=3600), Counter()
    call = backend._call

    async def counted(method: str, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls[method] += 1
        return await call(method, *args, **kwargs)

    backend._call = counted
    with held_grpc_port() as grpc_port:
        settings = Settings(
            backend="triton",
            triton_url=explicit.grpc_url,
            model_repository=tmp_path_factory.mktemp("routes-empty"),
            grpc_port=grpc_port,
            reuse_port=True,
        )
        with LiveServer(create_app(settings, backend=backend)) as live:
            yield live.url, f"127.0.0.1:{grpc_port}", calls


def load(explicit: TritonServer, name: str) -> None:
    with httpclient.InferenceServerClient(explicit.http_url) as triton:
        triton.load_model(name)  # returns once the model is ready


def test_http_infer_serves_a_model_triton_just_loaded(explicit, gateway) -> None:
    load(explicit, "over_http")
    answer = httpx.post(f"http://{gateway[0]}/v2/models/over_http/infer", json=BODY, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [2.0, 4.0]


def test_grpc_infer_serves_a_model_triton_just_loaded(explicit, gateway) -> None:
    load(explicit, "over_grpc")
    x = grpcclient.InferInput("x", [1, 2], "FP32")
    x.set_data_from_numpy(np.array([[1.0, 2.0]], dtype=np.float32))
    with grpcclient.InferenceServerClient(gateway[1]) as client:
        result = client.infer("over_grpc", [x], client_timeout=30)
    assert result.as_numpy("y").tolist() == [[2.0, 4.0]]


def test_the_metadata_of_a_model_triton_just_loaded_is_served(explicit, gateway) -> None:
    load(explicit, "described")
    answer = httpx.get(f"http://{gateway[0]}/v2/models/described", timeout=30)
    assert answer.status_code == 200, answer.text
    assert [t["name"] for t in answer.json()["inputs"]] == ["x"]


def test_a_name_triton_does_not_know_is_a_404_for_one_readiness_call(gateway) -> None:
    calls = gateway[2]
    calls.clear()
    for _ in range(3):
        answer = httpx.post(f"http://{gateway[0]}/v2/models/made_up/infer", json=BODY, timeout=30)
        assert answer.status_code == 404
        assert "made_up" in answer.json()["error"]
    assert calls == {"is_model_ready": 3}  # one a request: no index fetched, no amplification
