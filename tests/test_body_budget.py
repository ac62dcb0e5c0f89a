"""The gateway's budget of request-body bytes held at once (serving/protocol/limits.py, BodyBudget):
shared by HTTP's two paths (the protocol's lean requests and uvicorn's ASGI cycle) and the gRPC
server, a request past it is refused (503 with Retry-After, gRPC UNAVAILABLE) while the others are
served, and every body is given back once answered, or once its connection is gone."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import socket
import threading
import zlib
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.app import create_app
from serving.errors import PayloadTooLarge, ServingError
from serving.metrics import GatewayMetrics
from serving.protocol import h2_wire as w
from serving.protocol import lean
from serving.protocol.http1 import http_protocol
from serving.protocol.limits import (
    BODY_HOLD,
    LOOP_INFLATE_BYTES,
    BodyBudget,
    BodyHold,
    BodyLimitMiddleware,
    request_body,
)
from serving.settings import Settings
from tests.h2_client import Harness, answer, call_headers, doubling_request, grpc_message
from tests.repo_fixtures import SIZE, LiveServer, build_classifier_repository, held_grpc_port
from tests.test_http1_direct import echo
from tests.test_http1_limits import answered, responses
from tests.waiting import eventually

LIMIT = 3000
PIXELS = SIZE * SIZE
UNAVAILABLE = "14"


def test_the_budget_counts_what_fits_and_warns_once_a_spell(caplog: pytest.LogCaptureFixture) -> None:
    budget = BodyBudget(100, retry_after=2.0)
    with caplog.at_level(logging.WARNING, "serving.protocol.limits"):
        assert budget.take(60) and budget.take(40)
        assert not budget.take(1) and not budget.take(1)  # nothing counted for a refusal
        assert budget.used == 100
        budget.give(60)
        assert budget.take(10)
        budget.give(50)  # half free: the next refusal is a new spell
        assert not budget.take(200)
    assert len(caplog.records) == 2
    assert budget.used == 0 and budget.refusal().retry_after == 2.0 and budget.refusal().status == 503


# --- HTTP ---------------------------------------------------------------------------------------


proceed = threading.Event()  # lets an /inflate request whose body begins with "wait" be answered


async def inflating(request: Request, name: str = "") -> JSONResponse:
    """The size of the request's body once inflated (held in the budget meanwhile)."""
    body = await request_body(request, 1 << 20)
    if body.startswith(b"wait"):
        await asyncio.to_thread(proceed.wait, 30)
    return JSONResponse({"size": len(body)})


class App(FastAPI):
    def build_middleware_stack(self):
        stack = super().build_middleware_stack()
        routes = (
            lean.LeanRoute("/v1/models/", "/echo", echo),
            lean.LeanRoute("/v1/models/", "/inflate", inflating),
        )
        return lean.LeanRoutes(self, stack, 1 << 20, routes, self.state.budget)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[LiveServer, BodyBudget]]:
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn serves with h11, without the protocol's path")
    app = App()
    app.state.budget = budget = BodyBudget(LIMIT, retry_after=3.0)
    app.add_middleware(BodyLimitMiddleware, max_bytes=1 << 20, budget=budget)

    @app.post("/cycle")
    async def cycle(request: Request) -> dict:
        return {"size": len(await request.body())}

    app.add_api_route("/inflate", inflating, methods=["POST"])

    @app.exception_handler(ServingError)
    async def serving_error(_: Request, exc: ServingError) -> JSONResponse:
        retry = {"retry-after": f"{exc.retry_after:g}"} if exc.retry_after is not None else None
        return JSONResponse({"error": exc.message}, exc.status, headers=retry)

    with LiveServer(app, http=protocol) as live:
        yield live, budget


def _connect(live: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", live.port), timeout=30)


def _post(path: str, body: bytes, declared: int | None = None) -> bytes:
    size = len(body) if declared is None else declared
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), size, body)


def _status(live: LiveServer, request: bytes) -> tuple[int, dict, bytes]:
    with _connect(live) as sock:
        sock.sendall(request)
        data = b""
        while not data.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    [(status, body)] = responses(data)
    return status, body, data


def _until_returned(budget: BodyBudget) -> None:
    """Wait until every body is back in the budget (given back as its answer is sent)."""
    assert eventually(lambda: budget.used == 0), budget.used


LEAN = "/v1/models/m/echo"


def test_past_the_budget_requests_get_503_on_both_paths_and_the_rest_are_served(served) -> None:
    live, budget = served
    holding = _connect(live)
    try:
        holding.sendall(_post(LEAN, b"x" * 10, declared=2000))  # its declared 2 000 bytes are held
        assert eventually(lambda: budget.used == 2000)
        for path in (LEAN, "/cycle"):  # 2 000 + 1 500 > 3 000
            status, body, raw = _status(live, _post(path, b"y" * 1500))
            assert status == 503, raw
            assert body == {"error": "the gateway holds as many request bodies as it may: retry later"}
            assert b"retry-after: 3\r\n" in raw.lower()
        assert _status(live, _post(LEAN, b"z" * 900))[0] == 200  # what fits is served meanwhile
        chunked = b"POST /cycle HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunked += b"3e8\r\n" + b"c" * 1000 + b"\r\n" + b"3e8\r\n" + b"c" * 1000 + b"\r\n0\r\n\r\n"
        assert _status(live, chunked)[0] == 503  # counted as it arrives: the second chunk is over
        holding.sendall(b"x" * 1990)
        [(status, body)] = answered(holding, 1)
        assert status == 200 and len(body["echo"]) == 2000
    finally:
        holding.close()
    _until_returned(budget)
    assert _status(live, _post("/cycle", b"y" * 1500))[:2] == (200, {"size": 1500})
    _until_returned(budget)


@pytest.mark.parametrize("path", [LEAN, "/cycle"])
def test_a_body_whose_connection_goes_is_given_back(served, path: str) -> None:
    live, budget = served
    with _connect(live) as sock:
        sock.sendall(_post(path, b"x" * 10, declared=2500))
        assert eventually(lambda: budget.used == 2500)
    _until_returned(budget)


INFLATE = {"lean": "/v1/models/m/inflate", "cycle": "/inflate"}


def _gzipped(path: str, body: bytes) -> bytes:
    packed = gzip.compress(body)
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
    return head % (path.encode(), len(packed)) + packed


@pytest.mark.parametrize("path", list(INFLATE))
@pytest.mark.parametrize("ending", ["answered", "client gone"])
def test_what_a_body_inflates_to_is_held_until_its_request_ends(served, path: str, ending: str) -> None:
    live, budget = served
    proceed.clear()
    body = b"wait" + b" " * 2000  # 2 004 bytes from ~40
    with _connect(live) as sock:
        sock.sendall(_gzipped(INFLATE[path], body))
        assert eventually(lambda: budget.used == len(body))  # the larger of compressed and inflated
        if ending == "answered":
            proceed.set()
            assert answered(sock, 1) == [(200, {"size": len(body)})]
    proceed.set()  # a request whose client left ends once its work does (the ASGI cycle's)
    _until_returned(budget)


@pytest.mark.parametrize("path", list(INFLATE))
def test_a_body_that_inflates_past_the_budget_gets_503_and_holds_nothing(served, path: str) -> None:
    live, budget = served
    status, body, raw = _status(live, _gzipped(INFLATE[path], b" " * (LIMIT + 500)))
    assert status == 503, raw
    assert body == {"error": "the gateway holds as many request bodies as it may: retry later"}
    assert b"retry-after: 3\r\n" in raw.lower()
    _until_returned(budget)
    status, body, raw = _status(live, _gzipped(INFLATE[path], b" " * (LIMIT - 500)))
    assert (status, body) == (200, {"size": LIMIT - 500})  # one that fits is served
    _until_returned(budget)


# --- gRPC ---------------------------------------------------------------------------------------

MESSAGE = grpc_message(doubling_request(np.arange(6, dtype=np.float32).reshape(2, 3)).SerializeToString())


@pytest.fixture
def h2() -> Iterator[Harness]:
    harness = Harness(budget=BodyBudget(len(MESSAGE) + 20))
    harness.frames()
    yield harness
    harness.close()


def _grpc_status(h2: Harness, stream: int) -> tuple[str, str]:
    _, _, trailers = answer(h2.frames(), stream)
    return trailers["grpc-status"], trailers.get("grpc-message", "")


def test_a_grpc_call_past_the_budget_is_unavailable_and_the_one_holding_it_is_answered(h2: Harness) -> None:
    budget = h2.server.budget
    h2.send(h2.headers(1, call_headers()), w.frame(w.DATA, 0, 1, MESSAGE[:30]))
    assert budget.used == 30
    h2.send(h2.call(3, MESSAGE))  # 30 + the whole message > the budget
    status, message = _grpc_status(h2, 3)
    assert (status, message) == (
        UNAVAILABLE,
        "the gateway holds as many request bodies as it may: retry later",
    )
    h2.send(w.frame(w.DATA, w.END_STREAM, 1, MESSAGE[30:]))
    assert _grpc_status(h2, 1)[0] == "0"
    assert budget.used == 0
    h2.send(h2.call(5, MESSAGE))
    assert _grpc_status(h2, 5)[0] == "0" and budget.used == 0


def test_grpc_calls_reset_or_cut_off_give_their_bytes_back(h2: Harness) -> None:
    budget = h2.server.budget
    h2.send(h2.headers(1, call_headers()), w.frame(w.DATA, 0, 1, MESSAGE[:30]))
    h2.send(w.rst_stream(1, w.CANCEL))
    assert budget.used == 0
    h2.send(h2.headers(3, call_headers()), w.frame(w.DATA, 0, 3, MESSAGE[:30]))
    assert budget.used == 30
    h2.connection.connection_lost(None)
    assert budget.used == 0


BIG_X = np.arange(69_999, dtype=np.float32).reshape(-1, 3)
BIG = grpc_message(doubling_request(BIG_X).SerializeToString())  # ~280 KB: one DATA frame


def test_a_data_frame_is_counted_from_its_head_not_once_whole() -> None:
    """A frame's declared length is held in the budget as soon as its head arrives, as HTTP/1's
    Content-Length is: frames left unfinished on many connections were held outside the budget."""
    h2 = Harness(budget=BodyBudget(1 << 20))
    try:
        budget = h2.server.budget
        frame = w.frame(w.DATA, w.END_STREAM, 1, BIG)
        h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 1 << 24}), w.window_update(0, 1 << 24))  # room
        h2.send(h2.headers(1, call_headers()), frame[:1000])
        assert budget.used == len(BIG)
        h2.send(frame[1000:])
        headers, message, trailers = answer(h2.frames(), 1)
        assert trailers["grpc-status"] == "0" and budget.used == 0
        h2.send(
            h2.headers(3, call_headers()), frame.replace(b"\x00\x00\x00\x01", b"\x00\x00\x00\x03", 1)[:1000]
        )
        assert budget.used == len(BIG)
        h2.connection.connection_lost(None)  # cut off mid-frame: given back
        assert budget.used == 0
    finally:
        h2.loop.close()


def test_a_data_frame_past_the_budget_ends_its_call_and_is_dropped_as_it_arrives(h2: Harness) -> None:
    budget, connection = h2.server.budget, h2.connection
    frame = w.frame(w.DATA, w.END_STREAM, 1, BIG)
    h2.send(h2.headers(1, call_headers()), frame[:1000])
    status, message = _grpc_status(h2, 1)  # refused at the frame's head
    assert (status, message) == (
        UNAVAILABLE,
        "the gateway holds as many request bodies as it may: retry later",
    )
    for at in range(1000, len(frame), 50_000):  # the rest is read and dropped, never gathered
        h2.send(frame[at : at + 50_000])
        assert not connection.buffer and budget.used == 0
    h2.send(h2.call(3, MESSAGE))
    assert _grpc_status(h2, 3)[0] == "0" and budget.used == 0


def test_a_data_frame_for_a_call_already_answered_is_dropped_as_it_arrives(h2: Harness) -> None:
    h2.send(h2.call(1, MESSAGE))
    assert _grpc_status(h2, 1)[0] == "0"
    frame = w.frame(w.DATA, 0, 1, BIG)
    h2.send(frame[:1000])
    assert not h2.connection.buffer and h2.connection.skip == len(frame) - 1000
    h2.send(frame[1000:], h2.call(3, MESSAGE))
    assert _grpc_status(h2, 3)[0] == "0" and h2.server.budget.used == 0


# --- the gateway: one budget for both protocols ---------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """A gateway whose budget holds 4 096 bytes of request bodies at once."""
    repository = build_classifier_repository(tmp_path_factory.mktemp("budget") / "repo")
    with held_grpc_port() as grpc_port:
        settings = Settings(
            model_repository=repository,
            grpc_port=grpc_port,
            reuse_port=True,
            max_body_bytes=4096,
            max_inflight_body_bytes=4096,
        )
        with LiveServer(create_app(settings)) as live:
            live.grpc_url = f"127.0.0.1:{grpc_port}"
            yield live


def _infer_body() -> bytes:
    tensor = {"name": "images", "datatype": "UINT8", "shape": [1, SIZE, SIZE, 1], "data": [0] * PIXELS}
    return json.dumps({"inputs": [tensor]}).encode()


def test_the_gateways_http_and_grpc_share_one_budget(gateway) -> None:
    budget = gateway.app.state.body_budget
    infer = "/v2/models/lenet/infer"
    grpc_request = service_pb2.ModelInferRequest(model_name="lenet")
    grpc_request.inputs.add(name="images", datatype="UINT8").shape.extend([1, SIZE, SIZE, 1])
    grpc_request.raw_input_contents.append(bytes(PIXELS))
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ModelInfer(grpc_request, timeout=60).outputs  # served while the budget is free
        with _connect(gateway) as holding:
            holding.sendall(_post(infer, b"{", declared=3900))
            assert eventually(lambda: budget.used == 3900)
            status, body, _ = _status(gateway, _post(infer, _infer_body()))
            assert status == 503 and "retry later" in body["error"]
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(grpc_request, timeout=60)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
        assert eventually(lambda: budget.used == 0)  # the held body's connection went
        assert stub.ModelInfer(grpc_request, timeout=60).outputs
    assert _status(gateway, _post(infer, _infer_body()))[0] == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v2/models/lenet/infer", _infer_body()),
        ("/v1/models/lenet/classify", json.dumps({"images": ["A" * 2000]}).encode()),
        ("/v1/models/lenet/translate", json.dumps({"texts": ["un deux trois " * 150]}).encode()),
    ],
    ids=["infer", "classify", "translate"],
)
def test_a_compressed_http_body_is_held_at_what_it_inflates_to(gateway, path: str, body: bytes) -> None:
    """Its compressed bytes fit beside a body holding the rest of the budget; what they inflate to does
    not: 503 with Retry-After, as a plain body that large gets (the inflated bytes were held nowhere)."""
    budget = gateway.app.state.body_budget
    packed = gzip.compress(body)
    assert len(packed) < len(body) <= 4096  # the compressed bytes fit beside the holder, the inflated not
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
    with _connect(gateway) as holding:
        holding.sendall(_post("/v2/models/lenet/infer", b"{", declared=4096 - len(packed)))
        assert eventually(lambda: budget.used == 4096 - len(packed))
        status, answer, raw = _status(gateway, head % (path.encode(), len(packed)) + packed)
        assert status == 503, raw
        assert answer == {"error": "the gateway holds as many request bodies as it may: retry later"}
        assert b"retry-after: 1\r\n" in raw.lower()
        assert budget.used == 4096 - len(packed)  # the refused request's bytes are back
    assert eventually(lambda: budget.used == 0)


class _Request:
    """What request_body reads of a Starlette request: its body, Content-Encoding and scope."""

    def __init__(self, body: bytes, hold: BodyHold) -> None:
        self._body, self.headers, self.scope = body, {"content-encoding": "gzip"}, {BODY_HOLD: hold}

    async def body(self) -> bytes:
        return self._body


def test_a_body_inflated_in_steps_off_the_loop_is_whole_held_at_its_size_and_413_past_the_limit() -> None:
    """Two gzip members of several steps each: inflated whole, in order; one byte more is a 413."""
    plain = np.random.default_rng(0).integers(0, 4, 3 * LOOP_INFLATE_BYTES, dtype=np.uint8).tobytes()
    packed = gzip.compress(plain[:LOOP_INFLATE_BYTES]) + gzip.compress(plain[LOOP_INFLATE_BYTES:])
    hold = BodyHold(BodyBudget(8 * LOOP_INFLATE_BYTES))
    assert asyncio.run(request_body(_Request(packed, hold), len(plain))) == plain
    assert hold.held == len(plain)
    with pytest.raises(PayloadTooLarge, match=f"exceeds the {len(plain) - 1} byte limit"):
        asyncio.run(request_body(_Request(packed, BodyHold(BodyBudget(1 << 30))), len(plain) - 1))


def test_a_body_inflated_off_the_loop_is_held_as_it_grows_and_stopped_where_the_budget_ends() -> None:
    """Inflated bytes were held only once a body was whole: many large inflations at once each built
    their buffer before the budget knew of it. Now held ahead of the output, on the event loop; past
    the budget the inflation stops there (503) and gives every byte back."""
    from serving.errors import Unavailable
    from serving.protocol.limits import HOLD_AHEAD, Inflated, NoBudget

    plain = bytes(24 * LOOP_INFLATE_BYTES)
    packed = gzip.compress(plain)
    asked: list[int] = []
    out = Inflated(len(plain), lambda size: asked.append(size) or size <= 8 * LOOP_INFLATE_BYTES)
    decoder = zlib.decompressobj(31)
    with pytest.raises(NoBudget):
        out.stream(decoder, memoryview(packed), 0)
    assert (
        asked == sorted(asked) and asked[0] <= HOLD_AHEAD + LOOP_INFLATE_BYTES
    )  # held ahead, not at the end
    assert asked[-1] > 8 * LOOP_INFLATE_BYTES and len(asked) >= 2
    assert out.size <= 8 * LOOP_INFLATE_BYTES + LOOP_INFLATE_BYTES  # stopped within a step of the no
    budget = BodyBudget(12 * LOOP_INFLATE_BYTES)
    hold = BodyHold(budget)
    with pytest.raises(Unavailable, match="holds as many request bodies"):
        asyncio.run(request_body(_Request(packed, hold), len(plain)))
    hold.release()
    assert budget.used == 0
    fits = BodyHold(BodyBudget(32 * LOOP_INFLATE_BYTES))
    assert asyncio.run(request_body(_Request(packed, fits), len(plain))) == plain
    assert fits.held == len(plain)  # what it held ahead of the output given back at the end


class _CountingHarness(Harness):
    """A harness whose servicer records its refusals in :attr:`metrics` (one for every such harness:
    tests read differences)."""

    metrics = GatewayMetrics()

    @staticmethod
    async def _server(max_message_bytes, read_timeout_s, budget, send_timeout_s):
        from serving.protocol import grpc_h2
        from serving.protocol.grpc_server import unary_methods
        from serving.protocol.grpc_servicer import InferenceServicer
        from tests.test_grpc import FakeBackend

        methods = unary_methods(InferenceServicer(FakeBackend(), _CountingHarness.metrics))
        return grpc_h2.H2GrpcServer(methods, max_message_bytes, read_timeout_s, budget, send_timeout_s)


def test_a_data_frame_refused_as_it_arrives_is_counted_for_the_model_its_first_bytes_name() -> None:
    """The budget's refusal of a DATA frame at its head (before the message is gathered) was the one
    gRPC refusal unparsed that counted nowhere; the model's name is in the frame's first bytes."""
    model = doubling_request(BIG_X).model_name
    failures = "kiln_request_failures_total"
    before = _CountingHarness.metrics.sample(failures, model=model, status="503") or 0.0  # shared by tests
    h2 = _CountingHarness(budget=BodyBudget(len(MESSAGE) + 20))
    try:
        h2.frames()
        frame = w.frame(w.DATA, w.END_STREAM, 1, BIG)
        h2.send(h2.headers(1, call_headers()), frame[:1000])
        assert _grpc_status(h2, 1)[0] == UNAVAILABLE
        h2.send(frame[1000:])
    finally:
        h2.close()
    assert h2.metrics.sample(failures, model=model, status="503") == before + 1
