"""The real Triton server (nvidia-pytriton wheel) serves the python flavour exactly like ONNX Runtime does."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from serving.errors import BadRequest, ModelNotFound, Unavailable
from serving.execution.base import InferRequest
from serving.execution.triton import TritonBackend
from serving.triton import TritonServer, derive_python_flavour, find_triton, free_port, read_config
from serving.triton.ports import held_port
from serving.triton.server import TritonError
from tests.repo_fixtures import CHANNELS, SIZE, build_classifier_repository, running_triton
from tests.test_grpc import LoopThread, run_gateway
from tests.waiting import DEADLINE_S, eventually

pytestmark = pytest.mark.triton
needs_triton = pytest.mark.skipif(
    find_triton() is None, reason="the tritonserver binary from nvidia-pytriton is not installed"
)
MODELS = ("lenet",)  # registry names: the fixture exports real registry models
IMAGE = (SIZE, SIZE, CHANNELS)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_classifier_repository(tmp_path_factory.mktemp("repo"), MODELS)


@pytest.fixture(scope="module")
def triton(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with running_triton(repository, tmp_path_factory.mktemp("triton")) as server:
        yield server


def images(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, *IMAGE), dtype=np.uint8)


def reference(repository: Path, model: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """ONNX Runtime called directly on the exported model: the ground truth."""
    session = ort.InferenceSession(
        str(repository / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return dict(
        zip(["logits", "probabilities"], session.run(["logits", "probabilities"], {"images": x}), strict=True)
    )


def assert_same_outputs(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_python_flavour_keeps_tensors_and_batching(repository: Path, tmp_path: Path) -> None:
    source = tmp_path / "mixed"
    shutil.copytree(repository, source)
    (source / "engine").mkdir(exist_ok=True)
    (source / "engine" / "config.pbtxt").write_text(
        'name: "engine" platform: "tensorrt_plan" max_batch_size: 4'
    )
    report = derive_python_flavour(source, tmp_path / "flavour")
    assert report.wrapped == ["lenet"] and "engine" in report.skipped
    original, wrapped = (
        read_config(source / "lenet" / "config.pbtxt"),
        read_config(tmp_path / "flavour/lenet/config.pbtxt"),
    )
    assert (wrapped.backend, wrapped.platform) == ("python", "")
    for field in ("input", "output", "max_batch_size", "dynamic_batching", "name"):
        assert getattr(wrapped, field) == getattr(original, field), field
    assert (tmp_path / "flavour/lenet/1/model.py").is_file()
    assert (tmp_path / "flavour/lenet/1/model.onnx").read_bytes() == (
        source / "lenet/1/model.onnx"
    ).read_bytes()
    assert (tmp_path / "flavour/lenet/labels.txt").is_file()
    text_format.Parse((tmp_path / "flavour/lenet/config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_python_flavour_rejects_a_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        derive_python_flavour(tmp_path / "nope", tmp_path / "out")


def test_drawn_ports_are_never_handed_out_twice() -> None:
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_a_port_held_for_reuse_admits_a_reusing_server_and_nobody_else() -> None:
    """How the in-process gateways hold their gRPC port until grpc core binds it (tests/repo_fixtures)."""
    import socket

    from serving.triton.ports import held_port

    with held_port(reuse_port=True) as hold:
        port = hold.getsockname()[1]
        with socket.socket() as plain, pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            server.bind(("127.0.0.1", port))
            server.listen()
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                accepted, _ = server.accept()  # the listening socket gets the connection, not the hold
                accepted.close()


@needs_triton
def test_triton_on_drawn_ports_starts_again_on_new_ones_when_one_was_taken_meanwhile(
    repository: Path, tmp_path: Path
) -> None:
    from serving.triton.shm_regions import SHM_DIR, SHM_PREFIX, mapped_files

    before = set(SHM_DIR.glob(f"{SHM_PREFIX}*"))
    server = TritonServer(repository, tmp_path / "triton")
    taken = server.grpc_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        with server:
            assert server.grpc_port != taken and server.is_ready()
            assert len({server.http_port, server.grpc_port, server.metrics_port}) == 3
    # the attempt that could not bind exited with its stubs killed: their shared memory is gone too
    # (another server of this run, still serving, keeps its own mapped)
    left = set(SHM_DIR.glob(f"{SHM_PREFIX}*")) - before
    assert not {str(path) for path in left} - mapped_files(str(SHM_DIR)), left


def test_a_stopped_server_s_shared_memory_is_swept_and_nothing_else(tmp_path: Path) -> None:
    """Regions made since the server started and mapped by no process go; a mapped one (a live
    server's) and an older one stay."""
    import mmap

    from serving.triton.shm_regions import SHM_PREFIX, sweep_shm_regions

    old, left, live = (tmp_path / f"{SHM_PREFIX}{name}" for name in ("old", "left", "live"))
    for path in (old, left, live):
        path.write_bytes(b"\0" * 4096)
    os.utime(old, (1_000_000, 1_000_000))
    with open(live, "r+b") as handle, mmap.mmap(handle.fileno(), 0):
        assert sweep_shm_regions(2_000_000, tmp_path) == [left.name]
    assert old.exists() and live.exists() and not left.exists()
    assert sweep_shm_regions(2_000_000, tmp_path / "absent") == []


@needs_triton
@pytest.mark.parametrize("model", MODELS)
def test_triton_http_and_grpc_match_onnxruntime(triton: TritonServer, repository: Path, model: str) -> None:
    x = images(3, seed=len(model))
    want = reference(repository, model, x)
    with httpclient.InferenceServerClient(triton.http_url) as client:
        tensor = httpclient.InferInput("images", list(x.shape), "UINT8")
        tensor.set_data_from_numpy(x)
        result = client.infer(model, [tensor])
        assert_same_outputs({name: result.as_numpy(name) for name in want}, want)
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        tensor = grpcclient.InferInput("images", list(x.shape), "UINT8")
        tensor.set_data_from_numpy(x)
        result = client.infer(model, [tensor])
        assert_same_outputs({name: result.as_numpy(name) for name in want}, want)
        assert client.get_model_config(model).config.max_batch_size == 8


@needs_triton
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_backend_forwards_and_maps_errors(triton, repository, loop: LoopThread, protocol: str) -> None:
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    backend = TritonBackend(url, protocol=protocol, timeout_s=30)
    loop.run(backend.start())
    try:
        assert loop.run(backend.is_ready())
        assert backend.list_models() == sorted(MODELS)
        assert backend.config("lenet")["max_batch_size"] == 8  # as Triton's HTTP shows it
        assert [t.name for t in backend.metadata("lenet").outputs] == ["logits", "probabilities"]
        x = images(2, seed=7)
        response = loop.run(backend.infer(InferRequest(model="lenet", inputs={"images": x})))
        assert_same_outputs(response.outputs, reference(repository, "lenet", x))
        with pytest.raises(ModelNotFound, match="unknown model"):
            loop.run(backend.infer(InferRequest(model="nope", inputs={"images": x})))
        bad = InferRequest(
            model="lenet", inputs={"images": np.zeros((1, SIZE // 2, SIZE // 2, CHANNELS), np.uint8)}
        )
        with pytest.raises(BadRequest, match="Triton"):
            loop.run(backend.infer(bad))
    finally:
        loop.run(backend.stop())


@needs_triton
def test_gateway_with_triton_backend_gives_the_same_outputs(triton, repository, loop: LoopThread) -> None:
    with run_gateway(loop, repository, backend="triton", triton_url=triton.grpc_url) as gateway:
        x = images(2, seed=3)
        want = reference(repository, "lenet", x)
        with httpclient.InferenceServerClient(gateway.http_url) as client:
            assert client.is_server_ready()
            # perf_analyzer over HTTP reads max_batch_size from here (camelCase keys: no batch axis)
            with httpclient.InferenceServerClient(triton.http_url) as direct:
                ours, theirs = client.get_model_config("lenet"), direct.get_model_config("lenet")
            assert ours["max_batch_size"] == theirs["max_batch_size"] == 8
            # as Triton writes them: numbers (protobuf's JSON has 64-bit integers as strings)
            shapes = lambda config: [(t["data_type"], t["dims"]) for t in config["input"]]  # noqa: E731
            assert shapes(ours) == shapes(theirs)
            assert {k: v for k, v in ours["input"][0].items() if k in theirs["input"][0]} == theirs["input"][
                0
            ]
            tensor = httpclient.InferInput("images", list(x.shape), "UINT8")
            tensor.set_data_from_numpy(x)
            result = client.infer("lenet", [tensor])
            assert_same_outputs({name: result.as_numpy(name) for name in want}, want)
        with grpcclient.InferenceServerClient(gateway.grpc_url) as client:
            tensor = grpcclient.InferInput("images", list(x.shape), "UINT8")
            tensor.set_data_from_numpy(x)
            result = client.infer("lenet", [tensor])
            assert_same_outputs({name: result.as_numpy(name) for name in want}, want)


@needs_triton
def test_through_triton_the_statistics_hold_tritons_batching_and_the_gateways_outcomes(
    triton, repository, loop: LoopThread
) -> None:
    """perf_analyzer's server-side split of a gateway over Triton: queue and compute are Triton's (the
    gateway runs no batcher there), success and fail the gateway's own requests."""
    with run_gateway(loop, repository, backend="triton", triton_url=triton.grpc_url) as gateway:
        x = images(3, seed=5)
        with httpclient.InferenceServerClient(gateway.http_url) as client:
            for batch in (1, 1, 3):
                tensor = httpclient.InferInput("images", [batch, *IMAGE], "UINT8")
                tensor.set_data_from_numpy(x[:batch])
                client.infer("lenet", [tensor])
            ours = client.get_inference_statistics("lenet")["model_stats"][0]
            everyone = client.get_inference_statistics()["model_stats"]
        with grpcclient.InferenceServerClient(gateway.grpc_url) as client:
            over_grpc = client.get_inference_statistics("lenet", as_json=True)["model_stats"][0]
        with httpclient.InferenceServerClient(triton.http_url) as client:
            theirs = client.get_inference_statistics("lenet", "1")["model_stats"][0]
    assert ours["inference_stats"]["success"]["count"] == 3  # this gateway's requests
    assert ours["inference_stats"]["fail"]["count"] == 0
    # Triton counted every request any test sent it, and nothing ran between the two reads
    assert (
        ours["inference_stats"]["queue"]["count"] >= 3 and ours["inference_stats"]["compute_infer"]["ns"] > 0
    )
    for field in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert ours["inference_stats"][field] == theirs["inference_stats"][field], field
    for field in ("batch_stats", "inference_count", "execution_count", "last_inference"):
        assert ours[field] == theirs[field], field
    assert {s["name"]: s["execution_count"] for s in everyone}["lenet"] == theirs["execution_count"]
    assert int(over_grpc["execution_count"]) == theirs["execution_count"]
    assert int(over_grpc["inference_stats"]["success"]["count"]) == 3


@needs_triton
def test_a_request_with_tritons_reserved_parameters_is_forwarded_without_them(triton, repository, loop):
    """perf_analyzer sets triton_enable_empty_final_response on every gRPC request; tritonclient refuses
    to forward any triton_* name, so every request through the gateway failed before."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    x = images(1, seed=9)
    with run_gateway(loop, repository, backend="triton", triton_url=triton.grpc_url) as gateway:
        request = service_pb2.ModelInferRequest(model_name="lenet")
        request.parameters["triton_enable_empty_final_response"].bool_param = False
        request.parameters["timeout"].int64_param = 30_000_000  # a protocol parameter, consumed here
        request.inputs.add(name="images", datatype="UINT8", shape=list(x.shape))
        request.raw_input_contents.append(x.tobytes())
        with grpc.insecure_channel(gateway.grpc_url) as channel:
            reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    outputs = {o.name: i for i, o in enumerate(reply.outputs)}
    logits = np.frombuffer(reply.raw_output_contents[outputs["logits"]], np.float32)
    want = reference(repository, "lenet", x)["logits"]
    np.testing.assert_allclose(logits, want.reshape(-1), rtol=1e-5, atol=1e-6)


class _Statistics:
    """A Triton client answering ``get_inference_statistics`` only, as gRPC (a message) or HTTP (JSON)."""

    def __init__(self, protocol: str, names: list[str]) -> None:
        self.protocol, self.names, self.asked = protocol, names, []

    async def get_inference_statistics(self, name: str = "", version: str = "") -> object:
        self.asked.append((name, version))
        reply = {
            "model_stats": [
                {
                    "name": n,
                    "version": "1",
                    "last_inference": 1700000000000 + i,
                    "inference_count": 7 + i,
                    "execution_count": 2,
                    "inference_stats": {
                        "queue": {"count": 2, "ns": 1500},
                        "compute_infer": {"count": 2, "ns": 9},
                    },
                    "batch_stats": [{"batch_size": 4, "compute_infer": {"count": 1, "ns": 5}}],
                }
                for i, n in enumerate(self.names)
                if not name or n == name
            ]
        }
        if self.protocol == "http":
            return reply
        from google.protobuf import json_format
        from tritonclient.grpc import service_pb2

        return json_format.ParseDict(reply, service_pb2.ModelStatisticsResponse())


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tritons_batching_statistics_come_as_plain_ints_one_model_or_all(loop, protocol: str) -> None:
    names = ["tr_decoder", "lenet"]
    backend = TritonBackend("127.0.0.1:1", protocol=protocol)
    backend._client = fake = _Statistics(protocol, names)
    got = loop.run(backend.batching_statistics([(n, "1") for n in names]))
    assert fake.asked == [("", "")] and sorted(got) == [("lenet", "1"), ("tr_decoder", "1")]
    lenet = got[("lenet", "1")]
    assert lenet["inference_stats"]["queue"] == {"count": 2, "ns": 1500}
    assert lenet["inference_stats"]["compute_input"] == {"count": 0, "ns": 0}
    assert lenet["batch_stats"][0]["batch_size"] == 4 and lenet["batch_stats"][0]["compute_infer"]["ns"] == 5
    assert (lenet["inference_count"], lenet["execution_count"], lenet["last_inference"]) == (
        8,
        2,
        1700000000001,
    )
    assert "success" not in lenet["inference_stats"]  # the gateway's own
    one = loop.run(backend.batching_statistics([("tr_decoder", "1")]))
    assert fake.asked[-1] == ("tr_decoder", "1") and list(one) == [("tr_decoder", "1")]
    assert loop.run(backend.batching_statistics([("lenet", "2")])) == {}  # a version Triton did not report
    assert loop.run(backend.batching_statistics([])) == {} and len(fake.asked) == 3


class _TritonOnAHeldGrpcPort(TritonServer):
    """Triton binding its gRPC port with SO_REUSEPORT, beside a socket the test holds on it."""

    def command(self, *args: object) -> list[str]:
        return [*super().command(*args), "--reuse-grpc-port=true"]


@needs_triton
def test_unreachable_triton_is_503_then_the_gateway_recovers(repository, loop, tmp_path: Path) -> None:
    body = {
        "inputs": [
            {
                "name": "images",
                "datatype": "UINT8",
                "shape": [1, *IMAGE],
                "data": [0] * (SIZE * SIZE * CHANNELS),
            }
        ]
    }
    # held (SO_REUSEPORT, never listening) for the whole test: connections are refused until Triton
    # binds beside it and again once it stops, and no other process can take the port meanwhile
    with held_port(reuse_port=True) as hold:
        grpc_port = hold.getsockname()[1]
        with run_gateway(loop, repository, backend="triton", triton_url=f"127.0.0.1:{grpc_port}") as gateway:
            _down_up_down(gateway, repository, body, grpc_port, tmp_path)


def _down_up_down(gateway, repository: Path, body: dict, grpc_port: int, tmp_path: Path) -> None:
    """503 while nothing listens on ``grpc_port``, answers once Triton serves there, 503 after it stops."""
    down = httpx.post(f"http://{gateway.http_url}/v2/models/lenet/infer", json=body, timeout=30)
    assert down.status_code == 503, down.text
    assert "unavailable" in down.json()["error"] and down.headers["Retry-After"] == "1"
    assert httpx.get(f"http://{gateway.http_url}/v2/health/ready", timeout=30).status_code == 400
    with _TritonOnAHeldGrpcPort(repository, tmp_path / "triton", grpc_port=grpc_port):
        assert eventually(
            lambda: httpx.get(f"http://{gateway.http_url}/v2/health/ready", timeout=30).status_code == 200
        )
        up = httpx.post(f"http://{gateway.http_url}/v2/models/lenet/infer", json=body, timeout=30)
        assert up.status_code == 200, up.text
        want = reference(repository, "lenet", np.zeros((1, *IMAGE), np.uint8))["logits"]
        logits = next(o for o in up.json()["outputs"] if o["name"] == "logits")
        np.testing.assert_allclose(
            np.asarray(logits["data"], np.float32), want.reshape(-1), rtol=1e-5, atol=1e-6
        )
    again = httpx.post(f"http://{gateway.http_url}/v2/models/lenet/infer", json=body, timeout=30)
    assert again.status_code == 503, again.text
    # statistics need Triton's half: a 503 like its requests, never zeros for what Triton ran
    stats = httpx.get(f"http://{gateway.http_url}/v2/models/lenet/stats", timeout=30)
    assert stats.status_code == 503 and "unavailable" in stats.json()["error"], stats.text


def test_backend_before_any_triton_reports_unavailable(loop: LoopThread) -> None:
    with held_port() as hold:  # bound, never listening: refused, and no other server can take it
        backend = TritonBackend(f"127.0.0.1:{hold.getsockname()[1]}", timeout_s=5)
        loop.run(backend.start())
        try:
            assert not loop.run(backend.is_ready())
            with pytest.raises(Unavailable, match="unavailable") as caught:
                loop.run(backend.infer(InferRequest(model="lenet", inputs={"images": images(1)})))
            assert caught.value.retry_after == 1.0
        finally:
            loop.run(backend.stop())


class _ClosedUnderTheCall:
    """A tritonclient whose calls end as grpc.aio ends a call whose channel another call closed."""

    def __init__(self) -> None:
        self.closed = False

    async def is_server_ready(self) -> bool:
        raise asyncio.CancelledError  # what grpc.aio raises in a call when its channel closes

    async def close(self) -> None:
        self.closed = True


def test_a_call_whose_connection_another_call_closed_is_unavailable_not_a_crash(loop: LoopThread) -> None:
    """The start-up watcher and a readiness probe share the client: when one finds Triton gone and
    closes it, the other's call ends cancelled; that probe answers not ready (was a 500)."""
    backend = TritonBackend(f"127.0.0.1:{free_port()}", timeout_s=5)
    backend._client = _ClosedUnderTheCall()
    assert loop.run(backend.is_ready()) is False
    with pytest.raises(Unavailable, match="connection closed during the call"):
        loop.run(backend._call("is_server_ready"))


def test_a_cancelled_call_stays_cancelled(loop: LoopThread) -> None:
    """A request's own cancellation (its client left, the gateway stops) is not turned into a 503."""
    backend = TritonBackend(f"127.0.0.1:{free_port()}", timeout_s=5)
    started = asyncio.Event()

    class Hanging:
        async def is_server_ready(self) -> bool:
            started.set()
            await asyncio.Event().wait()
            return True

    backend._client = Hanging()

    async def cancel_it() -> None:
        call = asyncio.ensure_future(backend._call("is_server_ready", timeout_s=60))
        await started.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    loop.run(cancel_it())


def test_a_failure_on_a_replaced_client_leaves_the_new_one_open(loop: LoopThread) -> None:
    backend = TritonBackend(f"127.0.0.1:{free_port()}", timeout_s=5)
    old, new = _ClosedUnderTheCall(), _ClosedUnderTheCall()

    class Refused(_ClosedUnderTheCall):
        async def is_server_ready(self) -> bool:
            backend._client = new  # another call reconnected meanwhile
            raise ConnectionRefusedError("refused")

    old = Refused()
    backend._client = old
    with pytest.raises(Unavailable, match="refused"):
        loop.run(backend._call("is_server_ready"))
    assert backend._client is new and not new.closed


class _ChannelIn:
    def __init__(self, state: grpc.ChannelConnectivity) -> None:
        self.state = state

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.state


class _QueueFull(_ClosedUnderTheCall):
    """A gRPC client whose channel is in ``state`` and whose call Triton refuses: its queue is full."""

    def __init__(self, state: grpc.ChannelConnectivity) -> None:
        super().__init__()
        self._channel = _ChannelIn(state)

    async def is_server_ready(self) -> bool:
        raise InferenceServerException("[request id: 1] Exceeds maximum queue size", "StatusCode.UNAVAILABLE")


@pytest.mark.parametrize(
    ("state", "dropped"),
    [(grpc.ChannelConnectivity.READY, False), (grpc.ChannelConnectivity.TRANSIENT_FAILURE, True)],
)
def test_an_unavailable_answer_closes_the_shared_client_only_when_its_link_is_lost(loop, state, dropped):
    """Triton answers UNAVAILABLE for a full queue over a live link: closing the client then cancelled
    every other request in flight on it (a 503 for requests Triton had admitted)."""
    backend = TritonBackend(f"127.0.0.1:{free_port()}", timeout_s=5)
    client = backend._client = _QueueFull(state)
    with pytest.raises(Unavailable, match="Exceeds maximum queue size"):
        loop.run(backend._call("is_server_ready"))
    assert client.closed is dropped and (backend._client is None) is dropped


SLOW_CONFIG = """name: "slow"
backend: "python"
max_batch_size: 1
input [{ name: "x" data_type: TYPE_FP32 dims: [ 2 ] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [ 2 ] }]
dynamic_batching { default_queue_policy { max_queue_size: 1 } }
instance_group [{ count: 1 kind: KIND_CPU }]
"""
SLOW_MODEL = """import time
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        time.sleep(1.0)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", 2 * pb_utils.get_input_tensor_by_name(r, "x").as_numpy())]) for r in requests]
"""


@needs_triton
def test_requests_triton_admitted_are_answered_while_it_refuses_others_for_a_full_queue(
    loop: LoopThread, tmp_path: Path
) -> None:
    (tmp_path / "repo" / "slow" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "slow" / "config.pbtxt").write_text(SLOW_CONFIG)
    (tmp_path / "repo" / "slow" / "1" / "model.py").write_text(SLOW_MODEL)
    x = np.ones((1, 2), np.float32)

    async def one(backend: TritonBackend, delay_s: float) -> str:
        await asyncio.sleep(delay_s)
        try:
            response = await backend.infer(InferRequest(model="slow", inputs={"x": x}))
        except Unavailable as error:
            return "refused" if "Exceeds maximum queue size" in error.message else error.message
        return "answered" if response.outputs["y"].tolist() == [[2.0, 2.0]] else "wrong rows"

    async def five_at_once(url: str, protocol: str) -> list[str]:
        backend = TritonBackend(url, protocol=protocol, timeout_s=30)
        await backend.start()
        try:
            return await asyncio.gather(*(one(backend, 0.02 * i) for i in range(5)))
        finally:
            await backend.stop()

    with TritonServer(tmp_path / "repo", tmp_path / "triton") as server:
        outcomes = loop.run(five_at_once(server.grpc_url, "grpc"))
    assert set(outcomes) == {"answered", "refused"}, outcomes


def _running(pid: int) -> bool:
    """Whether ``pid`` is alive (a zombie waiting for its reaper counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_stopping_a_server_that_already_exited_still_ends_the_stubs_left_in_its_process_group(
    tmp_path: Path,
) -> None:
    """A tritonserver that died (or exited before it was ready) leaves its python stubs running; stop()
    returned at once for an exited server and left them to linger (up to ~20 s, measured)."""
    spawn_stub = "import subprocess, sys; print(subprocess.Popen(['sleep', '60']).pid, flush=True)"
    leader = subprocess.Popen(
        [sys.executable, "-c", spawn_stub], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    with leader.stdout:
        stub = int(leader.stdout.readline())
    leader.wait(DEADLINE_S)  # the "server" exited; its "stub" lives on in its process group
    server = TritonServer(tmp_path, tmp_path / "work")
    server.process = leader
    try:
        server.stop()
        assert eventually(lambda: not _running(stub))
    finally:
        if _running(stub):
            os.kill(stub, signal.SIGKILL)


def test_a_work_directory_with_whitespace_is_refused_at_once_not_after_the_ready_timeout(tmp_path):
    """Triton's python backend stubs die reading their arguments under such a path (``stol``), and the
    start waited its whole ready timeout (two minutes) before saying the server was not ready."""
    server = TritonServer(tmp_path / "repository", tmp_path / "my runs" / "triton", ready_timeout_s=600)
    with pytest.raises(TritonError, match="has whitespace in its path"):
        server.start()
    assert not (tmp_path / "my runs").exists()
