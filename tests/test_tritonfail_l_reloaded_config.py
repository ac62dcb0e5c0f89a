"""The ``triton`` backend's metadata and config of a model Triton reloaded with another config: the
reload keeps the model's ready versions, so Triton's index never told, and the gateway answered the
old input shape and ``max_batch_size`` for good while Triton refused requests shaped by them."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from serving.errors import BadRequest
from serving.execution.base import InferRequest
from serving.execution.triton import TritonBackend
from tests.test_grpc import LoopThread, run_gateway
from tests.test_triton_backend_faults import CONFIG, DOUBLE, explicit_triton
from tests.waiting import eventually

pytestmark = pytest.mark.triton


class _Reloadable:
    """A Triton HTTP client whose one model, ``m``, takes rows of ``width`` values (a test may change
    it, as a reload would: the index stays the same)."""

    def __init__(self) -> None:
        self.width = 2

    async def is_server_ready(self) -> bool:
        return True

    async def get_model_repository_index(self) -> list[dict]:
        return [{"name": "m", "version": "1", "state": "READY"}]

    async def get_model_metadata(self, name: str) -> dict:
        tensor = lambda n: {"name": n, "datatype": "FP32", "shape": [-1, self.width]}  # noqa: E731
        return {
            "name": name,
            "versions": ["1"],
            "platform": "python",
            "inputs": [tensor("x")],
            "outputs": [tensor("y")],
        }

    async def get_model_config(self, name: str) -> dict:
        return {"name": name, "max_batch_size": 4, "input": [{"name": "x", "dims": [self.width]}]}

    async def infer(self, model: str, inputs: list, **_: object) -> None:
        raise InferenceServerException(
            f"unexpected shape for input 'x'. Expected [-1,{self.width}]", status="400"
        )


def test_a_request_triton_refuses_fetches_its_models_metadata_again(loop: LoopThread) -> None:
    fake = _Reloadable()
    backend = TritonBackend("127.0.0.1:1", protocol="http", resync_interval_s=0)
    backend._client = fake
    loop.run(backend.start())
    try:
        assert backend.metadata("m").inputs[0].shape == [-1, 2]
        fake.width = 3  # reloaded with another input shape: the same index
        assert loop.run(backend.is_ready())
        request = InferRequest(model="m", inputs={"x": np.zeros((1, 2), np.float32)})
        with pytest.raises(BadRequest, match=r"Expected \[-1,3\]"):  # Triton's message kept
            loop.run(backend.infer(request))
        assert eventually(lambda: backend.metadata("m").inputs[0].shape == [-1, 3])
        assert backend.config("m")["input"][0]["dims"] == [3]
    finally:
        loop.run(backend.stop())


class _Away(_Reloadable):
    """:class:`_Reloadable` whose metadata calls Triton answers 503 while ``away`` holds."""

    def __init__(self) -> None:
        super().__init__()
        self.away, self.asked = False, 0

    async def get_model_metadata(self, name: str) -> dict:
        self.asked += 1
        if self.away:
            raise InferenceServerException("Server not ready", status="503")
        return await super().get_model_metadata(name)


def test_a_refetch_that_met_triton_away_is_done_by_the_next_sync(loop: LoopThread) -> None:
    fake = _Away()
    backend = TritonBackend("127.0.0.1:1", protocol="http", resync_interval_s=0)
    backend._client = fake
    loop.run(backend.start())
    try:
        fake.width, fake.away, asked = 3, True, fake.asked
        request = InferRequest(model="m", inputs={"x": np.zeros((1, 2), np.float32)})
        with pytest.raises(BadRequest):
            loop.run(backend.infer(request))
        assert eventually(lambda: fake.asked > asked)  # the refetch met Triton away
        fake.away = False
        assert loop.run(backend.is_ready())
        assert backend.metadata("m").inputs[0].shape == [-1, 3]
    finally:
        loop.run(backend.stop())


def test_a_model_reloaded_on_triton_with_another_shape_is_described_as_triton_now_serves_it(
    loop: LoopThread, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Real Triton (explicit model control) reloading ``double`` with rows of 3 and batches of 2."""
    with explicit_triton(tmp_path_factory, "reloaded", {"double": DOUBLE}) as server:
        root = server.model_repository
        with run_gateway(loop, root, backend="triton", triton_url=server.grpc_url) as gateway:
            url = f"http://{gateway.http_url}/v2/models/double"
            assert httpx.get(url, timeout=30).json()["inputs"][0]["shape"] == [-1, 2]
            config = (
                CONFIG.format(name="double")
                .replace("[ 2 ]", "[ 3 ]")
                .replace("max_batch_size: 4", "max_batch_size: 2")
            )
            with grpcclient.InferenceServerClient(server.grpc_url) as triton:
                triton.load_model("double", config=json.dumps(_config_json(config)))
                assert [int(d) for d in triton.get_model_metadata("double").inputs[0].shape] == [-1, 3]
            old = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
            refused = httpx.post(f"{url}/infer", json=old, timeout=30)
            assert refused.status_code == 400 and "Expected [-1,3]" in refused.json()["error"], refused.text
            assert eventually(lambda: httpx.get(url, timeout=30).json()["inputs"][0]["shape"] == [-1, 3])
            assert httpx.get(f"{url}/config", timeout=30).json()["max_batch_size"] == 2
            new = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
            answered = httpx.post(f"{url}/infer", json=new, timeout=30)
            assert answered.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0], answered.text


def _config_json(pbtxt: str) -> dict:
    """``pbtxt`` as the JSON config Triton's load API takes."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    return json_format.MessageToDict(
        text_format.Parse(pbtxt, model_config_pb2.ModelConfig()), preserving_proto_field_name=True
    )
