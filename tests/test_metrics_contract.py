"""/metrics as DESIGN.md promises it: request counts per model (failures by status), latency histograms
that resolve what they measure, an in-flight gauge back at zero whatever ended a request, and series
only for the repository's models whatever a client names."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.errors import DeadlineExceeded
from serving.execution.base import InferRequest, InferResponse
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.repository import Repository
from serving.metrics import GatewayMetrics
from serving.settings import Settings
from tests.repo_fixtures import SIZE, LiveServer, build_classifier_repository, held_grpc_port
from tests.waiting import DEADLINE_S, eventually


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    return build_classifier_repository(tmp_path_factory.mktemp("metrics") / "repo")


def _body(shape: tuple[int, ...] = (1, SIZE, SIZE, 1), request_id: str = "") -> bytes:
    count = 1
    for size in shape:
        count *= size
    tensor = {"name": "images", "datatype": "UINT8", "shape": list(shape), "data": [1] * count}
    return json.dumps({"id": request_id, "inputs": [tensor]}).encode()


def test_a_decoded_translation_counts_its_queue_and_decoding_as_the_statistics_read_them():
    metrics = GatewayMetrics()
    metrics.observe_translation("gru", 2.0, 10, "success", texts=3, queued=0.5)
    metrics.observe_translation("gru", 1.0, 0, "timeout", queued=0.25)  # a failure: no executed request
    metrics.observe_translation("gru", 1.0, 4, "success")  # never joined: nothing to split
    assert metrics.sample("kiln_executed_requests_total", model="gru") == 1
    stage = "kiln_request_stage_seconds_total"
    assert metrics.sample(stage, model="gru", stage="queue") == 0.5
    assert metrics.sample(stage, model="gru", stage="infer") == 1.5
    assert metrics.sample("kiln_translated_texts_total", model="gru") == 3 + 1


def test_latency_histograms_resolve_sub_millisecond_runs_and_multi_second_translations():
    metrics = GatewayMetrics()
    metrics.observe_batch(
        "lenet", 1, 1, 0.0, 0.0, 0.00004, 0.0
    )  # 40 us and 200 us: a small classifier's batches
    metrics.observe_batch("lenet", 1, 1, 0.0, 0.0, 0.0002, 0.0)
    metrics.observe_translation("gru", 8.0, 10, "success")
    metrics.observe_translation("gru", 20.0, 10, "success")
    compute = "kiln_compute_latency_seconds_bucket"
    assert metrics.sample(compute, model="lenet", le="0.0001") == 1
    assert metrics.sample(compute, model="lenet", le="0.00025") == 2
    translate = "kiln_translate_latency_seconds_bucket"
    assert metrics.sample(translate, model="gru", outcome="success", le="10.0") == 1
    assert metrics.sample(translate, model="gru", outcome="success", le="30.0") == 2


class Scripted:
    """The ONNX Runtime backend, except for requests whose id scripts another end: ``timeout`` (504),
    ``bug`` (an unexpected error) or ``hold`` (never answered: ``held`` is set once it waits)."""

    def __init__(self, repository: Path) -> None:
        self.inner = OnnxRuntimeBackend(Repository(repository))
        self.held = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def infer(self, request: InferRequest) -> InferResponse:
        if request.request_id == "timeout":
            raise DeadlineExceeded("timed out")
        if request.request_id == "bug":
            raise RuntimeError("a bug")
        if request.request_id == "hold":
            self.held.set()
            await asyncio.Event().wait()
        return await self.inner.infer(request)


def _leave_while_held(port: int, backend: Scripted) -> None:
    """A request whose client disconnects while the backend holds it."""
    body = _body(request_id="hold")
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as conn:
        head = f"POST /v2/models/lenet/infer HTTP/1.1\r\nhost: kiln\r\ncontent-length: {len(body)}\r\n\r\n"
        conn.sendall(head.encode() + body)
        assert backend.held.wait(DEADLINE_S)


def test_failed_requests_are_counted_by_status_and_none_stays_in_flight(repository):
    backend = Scripted(repository)
    app = create_app(Settings(model_repository=repository, grpc_port=0), backend=backend)
    metrics = app.state.metrics
    with LiveServer(app) as server:
        url = f"http://{server.url}/v2/models/lenet/infer"
        assert httpx.post(url, content=_body()).status_code == 200
        assert httpx.post(url, content=_body((1, SIZE, SIZE))).status_code == 400  # the model refuses it
        assert httpx.post(url, content=_body(request_id="timeout")).status_code == 504
        assert httpx.post(url, content=_body(request_id="bug")).status_code == 500
        _leave_while_held(server.port, backend)
        assert eventually(lambda: metrics.sample("kiln_in_flight_requests", model="lenet") == 0)
    failures = {
        status: metrics.sample("kiln_request_failures_total", model="lenet", status=status)
        for status in ("400", "499", "500", "504")
    }
    assert failures == {"400": 1, "499": 1, "500": 1, "504": 1}
    assert metrics.sample("kiln_requests_total", model="lenet", outcome="failure") == 4
    assert metrics.sample("kiln_requests_total", model="lenet", outcome="success") == 1
    assert metrics.sample("kiln_request_latency_seconds_count", model="lenet") == 5


def test_requests_refused_before_their_model_runs_are_counted_for_it_once(repository):
    """Refusals answered while the body or tensors were read (not JSON, a schema 422, an image that does
    not decode, a gzip stream cut short) reached no request series: a gateway refusing every request
    read idle. Now counted for the model named, once, over HTTP (lean and not) and gRPC."""
    with held_grpc_port() as grpc_port:
        settings = Settings(model_repository=repository, grpc_port=grpc_port, reuse_port=True)
        app = create_app(settings, backend=Scripted(repository))
        _refuse_over_both_protocols(app, grpc_port)
    metrics = app.state.metrics
    # the last HTTP one the model itself refused (observed, with its latency); the others before it ran
    assert metrics.sample("kiln_request_failures_total", model="lenet", status="400") == 5
    assert metrics.sample("kiln_request_failures_total", model="lenet", status="422") == 1
    assert metrics.sample("kiln_requests_total", model="lenet", outcome="failure") == 6
    assert metrics.sample("kiln_request_latency_seconds_count", model="lenet") == 1


def _refuse_over_both_protocols(app: Any, grpc_port: int) -> None:
    import gzip

    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with LiveServer(app) as server:
        base = f"http://{server.url}"
        assert httpx.post(f"{base}/v2/models/lenet/infer", content=b"{").status_code == 400
        assert httpx.post(f"{base}/v1/models/lenet/classify", json={"images": ["%%"]}).status_code == 400
        assert httpx.post(f"{base}/v1/models/lenet/classify", json={"pictures": []}).status_code == 422
        cut = gzip.compress(_body())[:-9]
        headers = {"content-encoding": "gzip"}
        assert httpx.post(f"{base}/v2/models/lenet/infer", content=cut, headers=headers).status_code == 400
        assert httpx.post(f"{base}/v2/models/lenet/infer", content=_body((1, SIZE, SIZE))).status_code == 400
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            bad = service_pb2.ModelInferRequest(model_name="lenet")
            bad.inputs.add(name="images", datatype="UINT8", shape=[1, SIZE, SIZE, 1])  # no contents
            with pytest.raises(grpc.RpcError):
                stub.ModelInfer(bad, timeout=10)


def _series(page: str) -> set[str]:
    """Every series of a /metrics page, by name and labels (values left out)."""
    return {line.rsplit(" ", 1)[0] for line in page.splitlines() if line and not line.startswith("#")}


def test_unknown_models_and_versions_a_client_names_add_no_series(repository):
    with TestClient(create_app(Settings(model_repository=repository, grpc_port=0))) as client:
        assert client.post("/v2/models/lenet/infer", content=_body()).status_code == 200
        assert client.post("/v2/models/lenet/infer", content=b"{").status_code == 400  # lenet's 400 series
        before = _series(client.get("/metrics").text)
        for _ in range(3):
            name, version = f"m-{uuid.uuid4().hex}", str(uuid.uuid4().int)
            for path in (
                f"/v2/models/{name}/infer",
                f"/v2/models/lenet/versions/{version}/infer",
                f"/v2/models/lenet/versions/x{version}/infer",
                f"/v1/models/{name}/classify",
                f"/v1/models/{name}/translate",
            ):
                assert client.post(path, content=_body()).status_code in (400, 404), path
            assert client.get(f"/v2/models/{name}/versions/{version}/ready").status_code in (400, 404)
        assert _series(client.get("/metrics").text) == before


def test_bodies_refused_before_they_are_read_are_counted_for_the_model_named(repository):
    """A body refused for its size (413: declared, or streamed past the limit) or for the body budget
    (503) before any of it was read reached no request series: a gateway refusing every request
    looked idle. Now counted once for the model the URL names (lean and routed paths alike); a model
    not in the repository adds no series."""
    settings = Settings(model_repository=repository, grpc_port=0, max_body_bytes=4096)
    app = create_app(settings, backend=Scripted(repository))
    metrics = app.state.metrics
    big = b"{" + b" " * 8192 + b"}"

    def chunks():
        for _ in range(8):
            yield b" " * 1024

    with LiveServer(app) as server:
        base = f"http://{server.url}"
        assert httpx.post(f"{base}/v2/models/lenet/infer", content=big).status_code == 413
        assert httpx.post(f"{base}/v1/models/lenet/classify", content=big).status_code == 413
        assert httpx.post(f"{base}/v2/models/lenet/infer", content=chunks()).status_code == 413
        assert httpx.post(f"{base}/v2/models/nothere/infer", content=big).status_code == 413
        budget = app.state.body_budget
        assert budget.take(budget.limit)  # every byte of the budget held, as by bodies in flight
        try:
            for path in ("/v2/models/lenet/infer", "/v1/models/lenet/classify"):
                refused = httpx.post(f"{base}{path}", content=_body())
                assert refused.status_code == 503 and refused.headers["retry-after"]
        finally:
            budget.give(budget.limit)
        assert httpx.post(f"{base}/v2/models/lenet/infer", content=_body()).status_code == 200
    assert metrics.sample("kiln_request_failures_total", model="lenet", status="413") == 3
    assert metrics.sample("kiln_request_failures_total", model="lenet", status="503") == 2
    assert metrics.sample("kiln_requests_total", model="lenet", outcome="failure") == 5
    assert metrics.sample("kiln_requests_total", model="lenet", outcome="success") == 1
    assert metrics.sample("kiln_request_failures_total", model="nothere", status="413") is None


def _infer_request(name: str, contents: bytes) -> Any:
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=name)
    request.inputs.add(name="images", datatype="UINT8", shape=[1, SIZE, SIZE, 1])
    request.raw_input_contents.append(contents)
    return request


def test_grpc_messages_refused_at_their_length_prefix_are_counted_for_the_model_they_name(repository):
    """gRPC's 413: a ModelInfer message declaring a length past the limit was refused at its prefix
    (RESOURCE_EXHAUSTED) unparsed, and counted nowhere, while HTTP counts the same body refused unread.
    Now counted for the model the message names first, plain or compressed; unknown names add none."""
    from tritonclient.grpc import service_pb2_grpc

    with held_grpc_port() as grpc_port:
        settings = Settings(
            model_repository=repository, grpc_port=grpc_port, reuse_port=True, max_body_bytes=4096
        )
        app = create_app(settings, backend=Scripted(repository))
        big = random.Random(7).randbytes(8192)  # incompressible: past the limit gzipped too
        with LiveServer(app), grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for name, compression in (("lenet", None), ("lenet", grpc.Compression.Gzip), ("nothere", None)):
                with pytest.raises(grpc.RpcError) as refused:
                    stub.ModelInfer(_infer_request(name, big), timeout=10, compression=compression)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "larger than max" in refused.value.details()
            stub.ModelInfer(_infer_request("lenet", bytes(SIZE * SIZE)), timeout=10)
    metrics = app.state.metrics
    assert metrics.sample("kiln_request_failures_total", model="lenet", status="413") == 2
    assert metrics.sample("kiln_requests_total", model="lenet", outcome="failure") == 2
    assert metrics.sample("kiln_requests_total", model="lenet", outcome="success") == 1
    assert metrics.sample("kiln_request_latency_seconds_count", model="lenet") == 1
    assert "nothere" not in metrics.render().decode()


def test_grpc_calls_refused_unparsed_count_once_where_their_first_bytes_name_a_model_served():
    """Kiln's gRPC server refuses a message past the limit at its prefix, or past the body budget as it
    arrives, before it is parsed: counted (413, 503) where its first bytes hold ``model_name`` whole
    and the backend serves that model; a name not arrived yet, another method's message or a
    compressed start that does not inflate adds nothing."""
    import gzip

    from tritonclient.grpc import service_pb2

    from serving.protocol.grpc_call import Call
    from serving.protocol.grpc_servicer import InferenceServicer
    from serving.protocol.limits import BodyBudget
    from tests.test_grpc import FakeBackend

    metrics = GatewayMetrics()
    servicer = InferenceServicer(FakeBackend(), metrics)
    message = _infer_request("double", bytes(64)).SerializeToString()

    def refused(payloads, budget=None, method="ModelInfer", encoding=None, max_bytes=1 << 20):
        call = Call(1, getattr(servicer, method), getattr(service_pb2, f"{method}Request"), 1 << 16, None)
        call.encoding = encoding
        answers = [call.gather(payload, max_bytes, budget) for payload in payloads]
        assert answers[:-1] == [None] * (len(answers) - 1)
        return answers[-1]

    def prefixed(data: bytes, compressed: bool = False, length: int | None = None) -> bytes:
        return bytes((int(compressed),)) + (length or len(data)).to_bytes(4, "big") + data

    full = BodyBudget(1 << 20)
    assert full.take(full.limit)
    assert refused([prefixed(message)], full)[0] == grpc.StatusCode.UNAVAILABLE.value[0]
    roomy = BodyBudget(40)  # the first frame fits, the second does not: the name from the first
    assert refused([prefixed(message)[:30], prefixed(message)[30:]], roomy)[0] == 14
    too_long = prefixed(message, length=2 << 20)
    assert refused([too_long[:3], too_long[3:]])[0] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    packed = gzip.compress(message)
    assert refused([prefixed(packed, True, 2 << 20)], encoding=b"gzip")[0] == 8
    # not counted: the name cut short, unknown, not a ModelInfer call, a start that does not inflate
    assert refused([prefixed(message, length=2 << 20)[:12]])[0] == 8
    unknown = _infer_request("nothere", b"").SerializeToString()
    assert refused([prefixed(unknown, length=2 << 20)])[0] == 8
    metadata = service_pb2.ModelMetadataRequest(name="double").SerializeToString()
    assert refused([prefixed(metadata, length=2 << 20)], method="ModelMetadata")[0] == 8
    assert refused([prefixed(b"\x0a\x06double", True, 2 << 20)], encoding=b"gzip")[0] == 8
    assert refused([prefixed(packed, True, 2 << 20)], encoding=b"snappy")[0] == 8
    assert metrics.sample("kiln_request_failures_total", model="double", status="503") == 2
    assert metrics.sample("kiln_request_failures_total", model="double", status="413") == 2
    assert metrics.sample("kiln_requests_total", model="double", outcome="failure") == 4
    assert "nothere" not in metrics.render().decode()


def test_open_connections_are_read_per_protocol_when_scraped(repository):
    """``kiln_open_connections`` counts the HTTP and gRPC connections a gateway holds, read when
    scraped: the kernel spreads connections over the workers by a hash of their addresses, and this is
    where an uneven split shows (one series per worker when they share their metrics)."""
    from serving.app import GatewayServer
    from tests.test_workers import _samples

    with held_grpc_port() as grpc_port:
        app = create_app(Settings(model_repository=repository, grpc_port=grpc_port, reuse_port=True))
        with (
            LiveServer(app, server_class=GatewayServer) as server,
            httpx.Client(base_url=f"http://{server.url}", timeout=30) as client,
        ):
            text = client.get("/metrics").text  # this client's one keep-alive connection
            assert _samples(text, "kiln_open_connections", protocol="http") == [1.0], text
            assert _samples(text, "kiln_open_connections", protocol="grpc") == [0.0], text
            channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
            grpc.channel_ready_future(channel).result(timeout=DEADLINE_S)

            def grpc_open() -> list[float]:
                return _samples(client.get("/metrics").text, "kiln_open_connections", protocol="grpc")

            assert eventually(lambda: grpc_open() == [1.0]), grpc_open()
            channel.close()
            assert eventually(lambda: grpc_open() == [0.0]), grpc_open()
