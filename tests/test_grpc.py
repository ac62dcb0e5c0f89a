"""The KServe v2 gRPC front end answers tritonclient.grpc exactly as Triton would."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from serving.errors import BadRequest, ModelNotFound, Overloaded, Unavailable
from serving.execution.base import InferRequest, InferResponse, ModelMetadata, TensorMeta
from serving.execution.datatypes import classification
from serving.protocol.grpc_server import GrpcHandle, start_grpc_server
from serving.protocol.grpc_servicer import InferenceServicer
from serving.triton.ports import held_port
from tests.repo_fixtures import CHANNELS, SIZE, build_classifier_repository
from tests.waiting import eventually

IMAGE = (SIZE, SIZE, CHANNELS)  # one image of the tiny test repository, NHWC


class LoopThread:
    """An asyncio loop in a background thread, so sync tritonclient calls can hit an aio server."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Gateway:
    http_url: str
    grpc_url: str


@contextmanager
def run_gateway(loop: LoopThread, repository: Path, **settings: Any) -> Iterator[Gateway]:
    """The real gateway app (HTTP + gRPC on free ports) served by uvicorn on ``loop``, stopped on exit."""
    import uvicorn

    from serving.app import create_app
    from serving.settings import Settings

    # uvicorn serves on the held HTTP socket; gRPC binds beside its held one (SO_REUSEPORT): no race
    http_socket, grpc_socket = held_port(), held_port(reuse_port=True)
    http_port, grpc_port = http_socket.getsockname()[1], grpc_socket.getsockname()[1]
    config = Settings(
        model_repository=repository, http_port=http_port, grpc_port=grpc_port, reuse_port=True, **settings
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), host="127.0.0.1", port=http_port, log_level="warning")
    )
    task = asyncio.run_coroutine_threadsafe(server.serve(sockets=[http_socket]), loop.loop)
    try:  # a gateway that fails to start is stopped and its sockets closed too
        deadline = time.monotonic() + 60
        while not server.started:
            if task.done() or time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not start: {task.exception() if task.done() else 'timeout'}")
            time.sleep(0.05)
        yield Gateway(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}")
    finally:
        server.should_exit = True
        try:
            task.result(60)
        finally:
            http_socket.close()
            grpc_socket.close()


class FakeBackend:
    """``double`` returns 2*x (FP32 [-1, 3]); ``echo`` returns BYTES as given; ``busy`` is overloaded;
    ``hang`` never answers, whatever its deadline (``abandoned`` is set once its work is cancelled)."""

    def __init__(self) -> None:
        self.last_request: InferRequest | None = None
        self.abandoned = threading.Event()

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def list_models(self) -> list[str]:
        return ["double", "echo", "busy", "hang"]

    def is_live(self) -> bool:
        return True

    async def is_ready(self) -> bool:
        return True

    async def model_ready(self, name: str, version: str = "") -> bool:
        self._check(name)
        return name != "busy"

    def load_error(self, name: str) -> str:
        return ""

    def _check(self, name: str) -> None:
        if name not in self.list_models():
            raise ModelNotFound(f"unknown model {name!r}")

    def metadata(self, name: str, version: str = "") -> ModelMetadata:
        self._check(name)
        dtype = "BYTES" if name == "echo" else "FP32"
        return ModelMetadata(
            name=name,
            versions=["1"],
            platform="fake",
            inputs=[TensorMeta("x", dtype, [-1, 3])],
            outputs=[TensorMeta("y", dtype, [-1, 3])],
        )

    def config(self, name: str, version: str = "") -> dict[str, Any]:
        self._check(name)
        return {
            "name": name,
            "platform": "fake",
            "maxBatchSize": 8,
            "input": [{"name": "x", "dataType": "TYPE_FP32", "dims": ["3"]}],
            "output": [{"name": "y", "dataType": "TYPE_FP32", "dims": ["3"]}],
            "dynamicBatching": {"maxQueueDelayMicroseconds": "100"},
        }

    async def infer(self, request: InferRequest) -> InferResponse:
        self.last_request = request
        self._check(request.model)
        if request.model == "busy":
            raise Overloaded("queue is full", retry_after=2)
        if request.model == "hang":
            try:
                await asyncio.Event().wait()
            finally:
                self.abandoned.set()
        x = request.inputs.get("x")
        if x is None or x.ndim != 2 or x.shape[1] != 3:
            raise BadRequest(f"input 'x' must have shape [-1, 3], got {None if x is None else list(x.shape)}")
        y = x if request.model == "echo" else x * 2
        y = np.tile(y, (int(request.parameters.get("tile", 1)), 1))  # an answer larger than its request
        for name, count in request.classification.items():
            labels = ["a", "b", "c"]
            assert name == "y"
            y = classification(y, count, labels, batched=True)
        return InferResponse(
            model=request.model, version="1", outputs={"y": y}, request_id=request.request_id
        )


@pytest.mark.parametrize("experiments", ["-event_engine_listener", None])
def test_the_start_up_line_names_the_grpc_experiments_set(loop, monkeypatch, caplog, experiments) -> None:
    if experiments is None:
        monkeypatch.delenv("GRPC_EXPERIMENTS", raising=False)
    else:
        monkeypatch.setenv("GRPC_EXPERIMENTS", experiments)
    with caplog.at_level(logging.INFO, logger="serving.protocol.grpc_server"):
        handle = loop.run(start_grpc_server(FakeBackend(), "127.0.0.1", 0, server="grpcio"))
    try:
        lines = [r.getMessage() for r in caplog.records if "listening" in r.getMessage()]
        assert lines == [
            f"KServe v2 gRPC listening on 127.0.0.1:{handle.port}"
            + (f" (GRPC_EXPERIMENTS={experiments})" if experiments else "")
        ]
    finally:
        loop.run(handle.stop(0.5))


@pytest.fixture(scope="module", params=["kiln", "grpcio"])
def fake_server(loop: LoopThread, request: pytest.FixtureRequest) -> Iterator[tuple[FakeBackend, GrpcHandle]]:
    """Each test of the servicer runs against both servers: Kiln's own HTTP/2 one and grpcio's."""
    backend = FakeBackend()
    handle = loop.run(start_grpc_server(backend, "127.0.0.1", 0, server=request.param))
    yield backend, handle
    loop.run(handle.stop(1.0))


@pytest.fixture
def client(fake_server: tuple[FakeBackend, GrpcHandle]) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(f"127.0.0.1:{fake_server[1].port}") as c:
        yield c


def _input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_health_rpcs_report_live_and_ready(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("double")
    assert not client.is_model_ready("busy")
    assert not client.is_model_ready("no_such_model")
    assert client.get_server_metadata().name == "kiln"


def test_model_metadata_and_config_come_from_the_backend(client: grpcclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("double")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 3])]
    config = client.get_model_config("double").config
    assert config.max_batch_size == 8
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert config.input[0].dims == [3]


def test_infer_round_trips_raw_contents(client: grpcclient.InferenceServerClient, fake_server) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = client.infer("double", [_input("x", x, "FP32")], request_id="r-1")
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
    assert result.get_response().id == "r-1"
    assert fake_server[0].last_request.request_id == "r-1"


def test_infer_round_trips_bytes_tensors(client: grpcclient.InferenceServerClient) -> None:
    x = np.array([[b"a", b"", "héllo".encode()], [b"x", b"yy", b"zzz"]], dtype=object)
    result = client.infer("echo", [_input("x", x, "BYTES")])
    assert result.as_numpy("y").tolist() == x.tolist()


def test_requested_outputs_and_deadline_reach_the_backend(client, fake_server) -> None:
    x = np.ones((1, 3), np.float32)
    client.infer(
        "double", [_input("x", x, "FP32")], outputs=[grpcclient.InferRequestedOutput("y")], client_timeout=5
    )
    request = fake_server[0].last_request
    assert request.outputs == ["y"]
    assert 0 < request.deadline_s <= 5.1  # the deadline crosses the wire with gRPC's rounding
    assert request.timeout_s is None  # no timeout parameter: nothing to shorten a queue timeout with


def test_the_timeout_parameter_reaches_the_backend_apart_from_the_deadline(client, fake_server) -> None:
    """Only Triton's ``timeout`` parameter may shorten a model's queue timeout, so the backend gets it
    and the gRPC deadline as two values (each may only shorten the server's limit)."""
    x = np.ones((1, 3), np.float32)
    client.infer("double", [_input("x", x, "FP32")], timeout=250_000, client_timeout=60)
    request = fake_server[0].last_request
    assert request.timeout_s == 0.25
    assert 0.25 < request.deadline_s <= 60.1
    assert "timeout" not in request.parameters
    client.infer("double", [_input("x", x, "FP32")], timeout=250_000)
    assert (fake_server[0].last_request.timeout_s, fake_server[0].last_request.deadline_s) == (0.25, None)


def test_classification_extension_returns_top_labelled_classes(
    client: grpcclient.InferenceServerClient,
) -> None:
    x = np.array([[0.1, 0.7, 0.2]], np.float32)
    wanted = [grpcclient.InferRequestedOutput("y", class_count=2)]
    top = client.infer("double", [_input("x", x, "FP32")], outputs=wanted).as_numpy("y")
    assert top.shape == (1, 2)
    assert [entry.decode().split(":", 1)[1] for entry in top[0]] == ["1:b", "2:c"]


@pytest.mark.parametrize("value", [3, "y", True], ids=["int", "string", "bool"])
def test_a_request_parameter_named_classification_is_not_taken_for_the_outputs_classification(
    client: grpcclient.InferenceServerClient, fake_server, value: object
) -> None:
    """Triton reads the classification extension from an output's parameters only; a request-level
    parameter of that name is the model's, and never becomes the backends' classification map."""
    x = np.array([[0.1, 0.7, 0.2]], np.float32)
    plain = client.infer("double", [_input("x", x, "FP32")], parameters={"classification": value})
    np.testing.assert_array_equal(plain.as_numpy("y"), 2 * x)
    assert fake_server[0].last_request.classification == {}
    assert fake_server[0].last_request.parameters["classification"] == value  # the model's, as Triton
    wanted = [grpcclient.InferRequestedOutput("y", class_count=1)]
    both = client.infer(
        "double", [_input("x", x, "FP32")], outputs=wanted, parameters={"classification": value}
    )
    assert [entry.decode().split(":", 1)[1] for entry in both.as_numpy("y")[0]] == ["1:b"]


@pytest.mark.parametrize("server", ["kiln", "grpcio"])
def test_an_answer_larger_than_the_request_limit_is_sent_as_triton_sends_it(
    loop: LoopThread, server: str
) -> None:
    """The message limit bounds what a client sends; answers are not capped (grpc core's default
    send limit and Triton's), whichever server serves."""
    handle = loop.run(
        start_grpc_server(FakeBackend(), "127.0.0.1", 0, server=server, max_message_bytes=64 << 10)
    )
    try:
        with grpcclient.InferenceServerClient(f"127.0.0.1:{handle.port}") as client:
            x = np.array([[1.0, 2.0, 3.0]], np.float32)
            result = client.infer("double", [_input("x", x, "FP32")], parameters={"tile": 10_000})
            assert result.as_numpy("y").shape == (10_000, 3)  # 120 KB against a 64 KiB limit
    finally:
        loop.run(handle.stop(1.0))


def test_typed_contents_are_accepted_like_raw_bytes(fake_server) -> None:
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{fake_server[1].port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="double")
        tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
        tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0])
        reply = stub.ModelInfer(request, timeout=10)
    assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [2.0, 4.0, 6.0]


def test_typed_contents_too_many_to_decode_on_the_loop_are_decoded_in_a_thread_alike(fake_server) -> None:
    from serving.protocol.grpc_codec import LOOP_ELEMENTS

    rows = LOOP_ELEMENTS // 3 + 1  # just over what the event loop decodes itself
    x = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3) % 1000
    options = [("grpc.max_receive_message_length", 64 << 20)]  # the answer is over 4 MiB
    with grpc.insecure_channel(f"127.0.0.1:{fake_server[1].port}", options=options) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="double")
        request.inputs.add(name="x", datatype="FP32", shape=[rows, 3]).contents.fp32_contents.extend(
            x.ravel()
        )
        reply = stub.ModelInfer(request, timeout=60)
    np.testing.assert_array_equal(
        np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(rows, 3), 2 * x
    )


@pytest.mark.parametrize(
    ("model", "array", "datatype", "code", "fragment"),
    [
        ("no_such_model", np.ones((1, 3), np.float32), "FP32", "StatusCode.NOT_FOUND", "unknown model"),
        ("double", np.ones((1, 4), np.float32), "FP32", "StatusCode.INVALID_ARGUMENT", "shape"),
        ("busy", np.ones((1, 3), np.float32), "FP32", "StatusCode.RESOURCE_EXHAUSTED", "queue is full"),
    ],
    ids=["unknown-model-is-not-found", "wrong-shape-is-invalid-argument", "overload-is-resource-exhausted"],
)
def test_serving_errors_map_to_grpc_status_codes(client, model, array, datatype, code, fragment) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, [_input("x", array, datatype)])
    assert caught.value.status() == code
    assert fragment in caught.value.message()


def test_metadata_of_an_unknown_model_is_not_found(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("no_such_model")
    assert caught.value.status() == "StatusCode.NOT_FOUND"


def test_malformed_raw_contents_are_invalid_argument(fake_server) -> None:
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{fake_server[1].port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="double")
        request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
        request.raw_input_contents.append(b"\x00" * 5)  # 12 bytes needed
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 12 bytes" in caught.value.details()


@pytest.mark.parametrize("server", ["kiln", "grpcio"])
def test_unavailable_backend_sets_retry_after(loop: LoopThread, server: str) -> None:
    class DownBackend(FakeBackend):
        async def infer(self, request: InferRequest) -> InferResponse:
            raise Unavailable("triton is unreachable", retry_after=1)

    handle = loop.run(start_grpc_server(DownBackend(), "127.0.0.1", 0, server=server))
    try:
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(service_pb2.ModelInferRequest(model_name="double"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert dict(caught.value.trailing_metadata())["retry-after"] == "1"
    finally:
        loop.run(handle.stop(0.5))


@pytest.fixture(scope="module")
def gateway(loop: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Gateway]]:
    repository = build_classifier_repository(tmp_path_factory.mktemp("repo"), ("lenet",))
    with run_gateway(loop, repository, backend="onnxruntime") as running:
        yield repository, running


def test_gateway_grpc_answers_like_onnxruntime(gateway: tuple[Path, Gateway]) -> None:
    import onnxruntime as ort

    repository, running = gateway
    x = np.random.default_rng(0).integers(0, 256, (3, *IMAGE), dtype=np.uint8)
    session = ort.InferenceSession(str(repository / "lenet/1/model.onnx"), providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(["logits", "probabilities"], {"images": x})
    with grpcclient.InferenceServerClient(running.grpc_url) as client:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("lenet")
        meta = client.get_model_metadata("lenet")
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
            ("images", "UINT8", [-1, *IMAGE])
        ]
        config = client.get_model_config("lenet").config
        assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
        result = client.infer("lenet", [_input("images", x, "UINT8")])
        np.testing.assert_allclose(result.as_numpy("logits"), logits, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("model", "array", "code"),
    [
        ("no_such_model", np.zeros((1, *IMAGE), np.uint8), "StatusCode.NOT_FOUND"),
        ("lenet", np.zeros((1, SIZE // 2, SIZE // 2, CHANNELS), np.uint8), "StatusCode.INVALID_ARGUMENT"),
        ("lenet", np.zeros((1, *IMAGE), np.float32), "StatusCode.INVALID_ARGUMENT"),
    ],
    ids=["unknown-model", "wrong-shape", "wrong-datatype"],
)
def test_gateway_grpc_maps_client_mistakes_to_status_codes(gateway, model, array, code) -> None:
    with grpcclient.InferenceServerClient(gateway[1].grpc_url) as client:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, [_input("images", array, "FP32" if array.dtype == np.float32 else "UINT8")])
        assert caught.value.status() == code, caught.value.message()
        assert client.is_server_live()  # the mistake did not take the server down


def test_a_grpc_message_over_the_body_limit_is_resource_exhausted(loop, tmp_path) -> None:
    repository = build_classifier_repository(tmp_path / "repo", ("lenet",))
    with (
        run_gateway(loop, repository, backend="onnxruntime", max_body_bytes=1 << 20) as running,
        grpcclient.InferenceServerClient(running.grpc_url) as client,
    ):
        with pytest.raises(InferenceServerException) as raised:
            client.infer("lenet", [_input("images", np.zeros((2 << 20,), np.uint8), "UINT8")])
        assert raised.value.status() == "StatusCode.RESOURCE_EXHAUSTED", raised.value.message()
        assert client.infer("lenet", [_input("images", np.zeros((1, *IMAGE), np.uint8), "UINT8")])


def test_a_request_parameter_named_classification_leaves_a_classifier_answering_as_on_http(gateway) -> None:
    image = _input("images", np.zeros((1, *IMAGE), np.uint8), "UINT8")
    with grpcclient.InferenceServerClient(gateway[1].grpc_url) as client:
        result = client.infer("lenet", [image], parameters={"classification": 2})
        assert result.as_numpy("logits").dtype == np.float32  # raw scores, not classification strings


@pytest.mark.parametrize("version", ["x", "-1", "1.0"])
def test_a_version_that_is_not_digits_is_invalid_argument_on_every_rpc_as_on_http(gateway, version) -> None:
    image = _input("images", np.zeros((1, *IMAGE), np.uint8), "UINT8")
    with grpcclient.InferenceServerClient(gateway[1].grpc_url) as client:
        for call in (
            lambda: client.get_model_metadata("lenet", version),
            lambda: client.get_model_config("lenet", version),
            lambda: client.is_model_ready("lenet", version),
            lambda: client.infer("lenet", [image], model_version=version),
        ):
            with pytest.raises(InferenceServerException) as raised:
                call()
            assert raised.value.status() == "StatusCode.INVALID_ARGUMENT", raised.value.message()
            assert "positive integer" in raised.value.message()
        assert client.is_model_ready("lenet", "1") and not client.is_model_ready("lenet", "7")


def _request_series(http_url: str) -> dict[str, float]:
    """The gateway's request series (``kiln_requests_total``, ``kiln_request_latency_seconds_count``,
    ``kiln_in_flight_requests``) from its /metrics page, by line name and labels."""
    import httpx

    page = httpx.get(f"http://{http_url}/metrics", timeout=10).text
    prefixes = ("kiln_requests_total{", "kiln_request_latency_seconds_count{", "kiln_in_flight_requests{")
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith(prefixes)
    }


def test_grpc_inference_calls_are_counted_in_the_request_metrics_as_http_ones_are(gateway) -> None:
    _, running = gateway
    success = 'kiln_requests_total{model="lenet",outcome="success",version="1"}'
    failure = 'kiln_requests_total{model="lenet",outcome="failure",version="1"}'
    latency = 'kiln_request_latency_seconds_count{model="lenet"}'
    before = _request_series(running.http_url)
    with grpcclient.InferenceServerClient(running.grpc_url) as client:
        for _ in range(3):
            client.infer("lenet", [_input("images", np.zeros((1, *IMAGE), np.uint8), "UINT8")])
        for model, array in [("lenet", np.zeros((1, 2, 2, CHANNELS), np.uint8)), ("nope", np.zeros((1, 1)))]:
            with pytest.raises(InferenceServerException):
                client.infer(model, [_input("images", array, "UINT8")])
    after = _request_series(running.http_url)
    assert after[success] - before.get(success, 0) == 3
    assert after[failure] - before.get(failure, 0) == 1  # the bad shape; the unknown model has no series
    assert after[latency] - before.get(latency, 0) == 4
    assert after['kiln_in_flight_requests{model="lenet"}'] == 0
    assert not any('model="nope"' in key for key in after)


class FakeTriton(InferenceServicer):
    """The gateway's servicer over FakeBackend, plus the repository index TritonBackend reads."""

    async def RepositoryIndex(self, request, context):  # noqa: N802 (gRPC method name)
        index = service_pb2.RepositoryIndexResponse
        return index(models=[index.ModelIndex(name=n, state="READY") for n in self.backend.list_models()])


async def serve_fake_triton(port: int, backend: FakeBackend | None = None) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(FakeTriton(backend or FakeBackend()), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound


def test_the_triton_backend_answers_its_first_call_after_triton_restarts_on_the_same_port(loop) -> None:
    from serving.execution.triton import TritonBackend

    # held (bound, never listening) while Triton is down: no other socket, nor one of the client's own
    # reconnects (a self-connect), can take the port; gRPC's server binds beside it (SO_REUSEPORT)
    held = held_port(reuse_port=True)
    server, port = loop.run(serve_fake_triton(held.getsockname()[1]))
    backend = TritonBackend(f"127.0.0.1:{port}", timeout_s=10)
    request = InferRequest(model="double", inputs={"x": np.ones((1, 3), np.float32)})
    try:
        loop.run(backend.start())
        assert loop.run(backend.infer(request)).outputs["y"].tolist() == [[2.0, 2.0, 2.0]]
        for restart in range(3):
            loop.run(server.stop(0))
            for _ in range(5):  # each failure grew gRPC's shared reconnect backoff: 1 s, 1.6 s, 2.6 s...
                with pytest.raises(Unavailable):
                    loop.run(backend.infer(request))
            server, again = loop.run(serve_fake_triton(port))
            assert again == port, f"restart {restart}: port {port} was taken meanwhile"
            response = loop.run(backend.infer(request))  # the first call, no retry, no waiting
            assert response.outputs["y"].tolist() == [[2.0, 2.0, 2.0]], restart
    finally:
        loop.run(backend.stop())
        loop.run(server.stop(0))
        held.close()


def test_a_triton_backend_started_before_triton_serves_once_triton_is_up_without_a_health_check(loop) -> None:
    from serving.execution.triton import TritonBackend

    held = held_port(reuse_port=True)  # nothing listens, nothing else takes it (see the test above)
    port = held.getsockname()[1]
    backend = TritonBackend(f"127.0.0.1:{port}", timeout_s=10)
    request = InferRequest(model="double", inputs={"x": np.ones((1, 3), np.float32)})
    server = None
    try:
        loop.run(backend.start())  # nothing listens yet: starts unready
        with pytest.raises(Unavailable):
            loop.run(backend.infer(request))
        server, _ = loop.run(serve_fake_triton(port))
        assert eventually(lambda: backend.list_models() == ["busy", "double", "echo", "hang"])
        assert loop.run(backend.infer(request)).outputs["y"].tolist() == [[2.0, 2.0, 2.0]]
    finally:
        loop.run(backend.stop())
        if server is not None:
            loop.run(server.stop(0))
        held.close()


@pytest.mark.parametrize("given", ["timeout_s", "deadline_s"])
def test_the_triton_backends_limit_is_not_extended_by_a_longer_client_timeout(loop, given) -> None:
    """A request's own timeout or gRPC deadline may only shorten ``--request-timeout-s``: one of an hour
    to a model that never answers ends at the backend's limit."""
    from serving.errors import DeadlineExceeded
    from serving.execution.triton import TritonBackend

    server, port = loop.run(serve_fake_triton(0))
    backend = TritonBackend(f"127.0.0.1:{port}", timeout_s=0.2)
    request = InferRequest(model="hang", inputs={"x": np.ones((1, 3), np.float32)}, **{given: 3600.0})
    try:
        loop.run(backend.start())
        with pytest.raises(DeadlineExceeded):
            loop.run(backend.infer(request))
    finally:
        loop.run(backend.stop())
        loop.run(server.stop(0))


def test_the_triton_backend_forwards_a_requests_priority_to_triton(loop) -> None:
    """Triton queues a request at the level its ``priority`` names (``priority_levels``); through
    ``--backend triton`` it was dropped at the gateway, so every request reached Triton at the default."""
    from serving.execution.triton import TritonBackend

    fake = FakeBackend()
    server, port = loop.run(serve_fake_triton(0, fake))
    backend = TritonBackend(f"127.0.0.1:{port}", timeout_s=10)
    try:
        loop.run(backend.start())
        for priority in (2, 0):
            request = InferRequest(
                model="double", inputs={"x": np.ones((1, 3), np.float32)}, priority=priority
            )
            assert loop.run(backend.infer(request)).outputs["y"].tolist() == [[2.0, 2.0, 2.0]]
            assert fake.last_request.priority == priority
    finally:
        loop.run(backend.stop())
        loop.run(server.stop(0))


def test_kilns_grpc_connections_probe_their_peer_with_tcp_keepalive(loop) -> None:
    """A client gone without a close (a crashed host, a dropped network) held its connection for the
    gateway's whole life: Kiln's server had no keepalive at all (grpcio's pings an idle peer every 2 h)."""
    import socket

    from serving.protocol import grpc_h2

    handle = loop.run(start_grpc_server(FakeBackend(), "127.0.0.1", 0, server="kiln"))
    try:
        with socket.create_connection(("127.0.0.1", handle.port)) as client:
            client.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # its SETTINGS answer the client's preface
            client.recv(9)  # the server's SETTINGS: its side of the connection is made
            (connection,) = handle.server.connections
            sock = connection.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            if hasattr(socket, "TCP_KEEPIDLE"):
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == grpc_h2.KEEPALIVE_IDLE_S
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == grpc_h2.KEEPALIVE_PROBES
    finally:
        loop.run(handle.stop(1.0))


def test_methods_kiln_does_not_serve_are_unimplemented_and_unknown_ones_too(fake_server) -> None:
    """Every method is served through one generic handler (none registered with gRPC core, see
    ``grpc_server._GenericOnly``): the servicer's own UNIMPLEMENTED for the service's other methods,
    gRPC's for a method the service does not have, and the server keeps serving."""
    port = fake_server[1].port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as load:
            stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name="double"))
        assert load.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "serves the repository it started with" in load.value.details()
        with pytest.raises(grpc.RpcError) as shared:  # perf_analyzer --shared-memory system's first call
            stub.SystemSharedMemoryRegister(service_pb2.SystemSharedMemoryRegisterRequest(name="r", key="/k"))
        assert shared.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "without --shared-memory" in shared.value.details()
        unknown = channel.unary_unary("/inference.GRPCInferenceService/NoSuchMethod")
        with pytest.raises(grpc.RpcError) as missing:
            unknown(b"")
        assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert stub.ServerLive(service_pb2.ServerLiveRequest()).live


@pytest.mark.parametrize("server", ["kiln", "grpcio"])
def test_a_stream_answers_each_request_by_id_and_a_failed_one_alone(loop: LoopThread, server: str) -> None:
    """perf_analyzer --streaming sends ModelStreamInfer: both servers answer every request on the
    stream, a failing one with error_message and the stream going on."""
    from tests.h2_client import doubling_request

    handle = loop.run(start_grpc_server(FakeBackend(), "127.0.0.1", 0, server=server))
    requests = []
    for i in range(4):
        request = doubling_request(np.full((1, 3), i, np.float32), model="nope" if i == 2 else "double")
        request.id = f"r{i}"
        requests.append(request)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            replies = list(stub.ModelStreamInfer(iter(requests), timeout=30))
    finally:
        loop.run(handle.stop(1.0))
    assert len(replies) == 4
    failed = [r for r in replies if r.error_message]
    assert len(failed) == 1 and "nope" in failed[0].error_message
    answered = {r.infer_response.id: r.infer_response for r in replies if not r.error_message}
    assert sorted(answered) == ["r0", "r1", "r3"]
    # Triton marks each answer on a stream final (clients of decoupled models read it), but for a
    # refusal before the model took the request (the unknown model)
    assert all(
        r.infer_response.parameters["triton_final_response"].bool_param
        for r in replies
        if not r.error_message
    )
    assert "triton_final_response" not in failed[0].infer_response.parameters
    for name, response in answered.items():
        got = np.frombuffer(response.raw_output_contents[0], np.float32)
        np.testing.assert_array_equal(got, np.full(3, 2 * int(name[1:]), np.float32))


@pytest.mark.parametrize("server", ["kiln", "grpcio"])
def test_tritonclients_stream_gets_every_answer_through_its_callback(loop: LoopThread, server: str) -> None:
    """tritonclient's start_stream / async_stream_infer, as a user streams requests: each answer
    reaches the callback with its id, while the stream stays open between requests."""
    import queue

    handle = loop.run(start_grpc_server(FakeBackend(), "127.0.0.1", 0, server=server))
    answers: queue.Queue = queue.Queue()
    try:
        with grpcclient.InferenceServerClient(f"127.0.0.1:{handle.port}") as client:
            client.start_stream(callback=lambda result, error: answers.put((result, error)))
            for i in range(3):  # one at a time: each answered before the next is sent
                x = np.full((2, 3), i, np.float32)
                tensor = grpcclient.InferInput("x", [2, 3], "FP32")
                tensor.set_data_from_numpy(x)
                client.async_stream_infer("double", [tensor], request_id=f"q{i}")
                result, error = answers.get(timeout=30)
                assert error is None, error
                assert result.get_response().id == f"q{i}"
                np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)
            client.stop_stream()
    finally:
        loop.run(handle.stop(1.0))


@pytest.mark.parametrize("server", ["kiln", "grpcio"])
def test_many_streams_and_unary_calls_on_one_channel_each_get_their_own_answers(
    loop: LoopThread, server: str
) -> None:
    """tritonclient.grpc.aio's stream_infer on 8 streams of 40 requests each, beside unary calls on
    the same connection: every answer reaches its own stream with its own values."""
    import tritonclient.grpc.aio as aioclient

    handle = loop.run(start_grpc_server(FakeBackend(), "127.0.0.1", 0, server=server))

    def tensor(value: float) -> aioclient.InferInput:
        x = aioclient.InferInput("x", [1, 3], "FP32")
        x.set_data_from_numpy(np.full((1, 3), value, np.float32))
        return x

    async def requests(stream: int):  # noqa: ANN202 - stream_infer's async iterator of request dicts
        for i in range(40):
            yield {
                "model_name": "double",
                "inputs": [tensor(stream * 100 + i)],
                "request_id": f"{stream}:{i}",
            }

    async def one_stream(client: aioclient.InferenceServerClient, stream: int) -> dict[str, float]:
        got = {}
        async for result, error in client.stream_infer(requests(stream)):
            assert error is None, error
            got[result.get_response().id] = float(result.as_numpy("y")[0, 0])
        return got

    async def body() -> tuple[list[dict[str, float]], list[float]]:
        async with aioclient.InferenceServerClient(f"127.0.0.1:{handle.port}") as client:
            streams = asyncio.gather(*(one_stream(client, s) for s in range(8)))
            unary = asyncio.gather(*(client.infer("double", [tensor(-i)]) for i in range(20)))
            answers, singles = await asyncio.gather(streams, unary)
        return answers, [float(r.as_numpy("y")[0, 0]) for r in singles]

    try:
        answers, singles = asyncio.run(body())
    finally:
        loop.run(handle.stop(1.0))
    for stream, got in enumerate(answers):
        assert got == {f"{stream}:{i}": 2.0 * (stream * 100 + i) for i in range(40)}
    assert singles == [-2.0 * i for i in range(20)]


def test_the_repository_index_lists_every_version_with_its_state(fake_server) -> None:
    """tritonclient's get_model_repository_index reads it; ``ready`` keeps the ready ones, as Triton's
    flag does."""
    port = fake_server[1].port
    with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        every = client.get_model_repository_index(as_json=True)["models"]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        ready = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True), timeout=10).models
    assert sorted(m.name for m in ready) == ["double", "echo", "hang"]
    states = {m["name"]: (m["version"], m["state"]) for m in every}
    assert states == {
        "busy": ("1", "UNAVAILABLE"),
        "double": ("1", "READY"),
        "echo": ("1", "READY"),
        "hang": ("1", "READY"),
    }
