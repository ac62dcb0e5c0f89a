"""Hostile input on every route and both protocols gets its documented 4xx (or the gRPC code Triton
uses), never a 500, and the gateway stays ready: a hand-written battery of malformed bodies and
tensors, then generated gRPC requests and binary-extension bodies (hypothesis: derandomized in the
suite, ``KILN_WIRE_FUZZ_EXAMPLES=5000`` explores at random)."""

from __future__ import annotations

import gzip
import json
import logging
import socket
import struct
import zlib
from typing import Any

import grpc
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.app import create_app
from serving.settings import Settings
from tests.repo_fixtures import (
    SIZE,
    LiveServer,
    classifier_gateway,
    infer_or_refusal,
    wire_fuzz_settings,
)
from tests.waiting import eventually

DEEP_LIST = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
CLASSIFY, TRANSLATE, INFER = (
    "/v1/models/lenet/classify",
    "/v1/models/lenet/translate",
    "/v2/models/lenet/infer",
)
PIXELS = SIZE * SIZE


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with classifier_gateway(tmp_path_factory.mktemp("hostile")) as live:
        yield live


def tensor(data=None, datatype="UINT8", shape=(1, SIZE, SIZE, 1), name="images", **extra) -> dict:
    entry = {"name": name, "datatype": datatype, "shape": list(shape), "data": data or [0] * PIXELS}
    return {"inputs": [entry], **extra}


def raw_json(text: str) -> dict:
    """A body sent byte for byte (JSON escapes such as a lone \\ud800 that json.dumps would not keep)."""
    return {"content": text.encode(), "headers": {"content-type": "application/json"}}


BYTES_HEADER = json.dumps(
    {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 5}}]}
).encode()
HTTP_CASES = {
    "deeply nested list, classify": (CLASSIFY, {"content": DEEP_LIST}, 400, "nested too deeply"),
    "deeply nested object, classify": (CLASSIFY, {"content": DEEP_OBJECT}, 400, "nested too deeply"),
    "deeply nested list, translate": (TRANSLATE, {"content": DEEP_LIST}, 400, "nested too deeply"),
    "deeply nested list, infer": (INFER, {"content": DEEP_LIST}, 400, "nested too deeply"),
    "deeply nested object, infer": (INFER, {"content": DEEP_OBJECT}, 400, "nested too deeply"),
    "deeply nested tensor data": (
        INFER,
        {
            "content": b'{"inputs":[{"name":"images","datatype":"UINT8","shape":[1],"data":'
            + DEEP_LIST
            + b"}]}"
        },
        400,
        "nested too deeply",
    ),
    "lone surrogate in a text": (TRANSLATE, raw_json('{"texts": ["a\\ud800b"]}'), 400, "lone surrogate"),
    "lone surrogate in BYTES data": (
        INFER,
        raw_json('{"inputs":[{"name":"t","datatype":"BYTES","shape":[1],"data":["\\udfff"]}]}'),
        400,
        "lone surrogate",
    ),
    "lone surrogate in a tensor name": (
        INFER,
        raw_json('{"inputs":[{"name":"\\ud800","datatype":"UINT8","shape":[1],"data":[1]}]}'),
        400,
        "unexpected",
    ),
    "integer beyond any float": (INFER, {"json": tensor([10**400], "FP32", (1,))}, 400, "out of range"),
    "integer literal over Python's 4 300 digits, infer": (
        INFER,
        {
            "content": b'{"inputs":[{"name":"images","datatype":"UINT8","shape":[1],"data":['
            + b"1" * 5000
            + b"]}]}"
        },
        400,
        "not valid JSON",
    ),
    "integer literal over Python's 4 300 digits, classify": (
        CLASSIFY,
        {"content": b'{"images":["AA=="],"top_k":' + b"1" * 5000 + b"}"},
        400,
        "not valid JSON",
    ),
    "integer literal over Python's 4 300 digits, translate": (
        TRANSLATE,
        {"content": b'{"texts":["un"],"beam_size":' + b"1" * 5000 + b"}"},
        400,
        "not valid JSON",
    ),
    "timeout beyond int64": (INFER, {"json": tensor(parameters={"timeout": 10**400})}, 400, "'timeout'"),
    "header length in digits int() refuses": (
        INFER,
        {"content": BYTES_HEADER, "headers": {"Inference-Header-Content-Length": b"\xb2"}},
        400,
        "non-negative integer",
    ),
    "integer beyond INT64": (INFER, {"json": tensor([10**40], "INT64", (1,))}, 400, "out of range"),
    "huge zero-size shape": (INFER, {"json": tensor([], shape=(0, 2**62, 2**62))}, 400, "too large"),
    "more dimensions than numpy allows": (INFER, {"json": tensor([], shape=(0,) * 40)}, 400, "too large"),
    "shape that is not a list of integers": (INFER, {"json": tensor(shape=[[1], "2"])}, 400, "shape"),
    "request id that is not a string": (INFER, {"json": tensor(id={"a": 1})}, 400, "'id' must be a string"),
    "binary_data_output that is not a boolean": (
        INFER,
        {"json": tensor(parameters={"binary_data_output": "yes"})},
        400,
        "true or false",
    ),
    "BYTES length prefix past the end": (
        INFER,
        {
            "content": BYTES_HEADER + struct.pack("<I", 9) + b"x",
            "headers": {"Inference-Header-Content-Length": str(len(BYTES_HEADER))},
        },
        400,
        "runs past the end",
    ),
    "an output asked for twice, differently": (
        INFER,
        {
            "json": tensor(
                outputs=[{"name": "logits"}, {"name": "logits", "parameters": {"binary_data": True}}]
            )
        },
        400,
        "requested twice",
    ),
    "an output to shared memory": (
        INFER,
        {
            "json": tensor(
                outputs=[
                    {
                        "name": "logits",
                        "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 12},
                    }
                ]
            )
        },
        400,
        "shared memory is not supported",
    ),
    "top_k with a fraction": (CLASSIFY, {"json": {"images": ["AA=="], "top_k": 2.5}}, 422, "top_k"),
    "return_scores that is a number": (
        TRANSLATE,
        {"json": {"texts": ["un"], "return_scores": 0}},
        422,
        "return_scores",
    ),
}


@pytest.mark.parametrize("case", list(HTTP_CASES))
def test_hostile_http_input_gets_its_4xx_with_a_json_error_and_the_gateway_stays_ready(gateway, case):
    path, kwargs, status, words = HTTP_CASES[case]
    response = httpx.post(f"http://{gateway.url}{path}", timeout=60, **kwargs)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    assert httpx.get(f"http://{gateway.url}/v2/health/ready").status_code == 200


def grpc_request(**parameters: service_pb2.InferParameter) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="lenet")
    request.inputs.add(name="images", datatype="UINT8").shape.extend([1, SIZE, SIZE, 1])
    request.raw_input_contents.append(bytes(PIXELS))
    for key, value in parameters.items():
        request.parameters[key].CopyFrom(value)
    return request


def _without_raw(request: service_pb2.ModelInferRequest, **parameters: Any) -> service_pb2.ModelInferRequest:
    del request.raw_input_contents[:]
    for key, value in parameters.items():  # the input's own parameters
        request.inputs[0].parameters[key].CopyFrom(value)
    return request


def _typed_too(request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferRequest:
    request.inputs[0].contents.uint_contents.extend([0] * PIXELS)
    return request


def _shaped(shape: list[int], raw: bytes) -> service_pb2.ModelInferRequest:
    request = grpc_request()
    request.inputs[0].shape[:] = shape
    request.raw_input_contents[0] = raw
    return request


def _bytes_tensor(raw: bytes) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="lenet")
    request.inputs.add(name="text", datatype="BYTES").shape.extend([1])
    request.raw_input_contents.append(raw)
    return request


def _outputs(*outputs: tuple[str, dict[str, service_pb2.InferParameter]]) -> service_pb2.ModelInferRequest:
    request = grpc_request()
    for name, parameters in outputs:
        output = request.outputs.add(name=name)
        for key, value in parameters.items():
            output.parameters[key].CopyFrom(value)
    return request


GRPC_CASES = {
    "a parameter with no value": (grpc_request(beam_size=service_pb2.InferParameter()), "has no value"),
    "a timeout with no value": (grpc_request(timeout=service_pb2.InferParameter()), "has no value"),
    "a huge zero-size shape": (_shaped([2**62, 2**62, 0], b""), "too large"),
    "a negative dimension": (_shaped([-1], b""), "negative dimension"),
    "raw bytes that do not fill the shape": (_shaped([1, SIZE, SIZE, 1], b"\0" * 7), "bytes of binary data"),
    "no contents at all": (_without_raw(grpc_request()), "needs"),
    "a BYTES length prefix past the end": (_bytes_tensor(struct.pack("<I", 9) + b"x"), "runs past the end"),
    "an unknown datatype": (_shaped([1], b"\0"), "unsupported datatype"),
    "an output asked for twice, differently": (
        _outputs(("logits", {}), ("logits", {"classification": service_pb2.InferParameter(int64_param=2)})),
        "requested twice",
    ),
    "raw and typed contents for one input": (_typed_too(grpc_request()), "must not be set with raw_input"),
    "an input from shared memory": (
        _without_raw(grpc_request(), shared_memory_region=service_pb2.InferParameter(string_param="r")),
        "shared memory is not supported",
    ),
    "an output to shared memory": (
        _outputs(("logits", {"shared_memory_region": service_pb2.InferParameter(string_param="r")})),
        "shared memory is not supported",
    ),
}
GRPC_CASES["an unknown datatype"][0].inputs[0].datatype = "COMPLEX"


@pytest.mark.parametrize("case", list(GRPC_CASES))
def test_hostile_grpc_input_is_invalid_argument_never_internal(gateway, case):
    request, words = GRPC_CASES[case]
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(request, timeout=60)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
        assert words in raised.value.details()
        assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=60).ready


@pytest.mark.parametrize("path", [CLASSIFY, TRANSLATE, INFER])
def test_a_client_gone_before_its_body_ends_is_no_server_error_and_the_gateway_serves_on(
    gateway, caplog, path
) -> None:
    caplog.set_level(logging.DEBUG, logger="serving.app")
    uvicorn_errors = logging.getLogger("uvicorn.error")  # uvicorn's loggers do not reach the root
    uvicorn_errors.addHandler(caplog.handler)
    try:
        host, port = gateway.url.split(":")
        with socket.create_connection((host, int(port)), timeout=10) as client:
            client.sendall(  # a chunked body (not read whole by the protocol), cut off mid-chunk
                f"POST {path} HTTP/1.1\r\nHost: kiln\r\ncontent-type: application/json\r\n"
                'transfer-encoding: chunked\r\n\r\n20\r\n{"texts"'.encode()
            )
        assert eventually(lambda: any("disconnected before" in r.getMessage() for r in caplog.records))
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        uvicorn_errors.removeHandler(caplog.handler)
    assert httpx.get(f"http://{gateway.url}/v2/health/ready", timeout=10).status_code == 200


def test_error_messages_carrying_invalid_unicode_are_still_json(gateway):
    response = httpx.get(f"http://{gateway.url}/v2/models/%ED%A0%80x")
    assert response.status_code == 404
    assert json.loads(response.content)["error"].startswith("unknown model")


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/models/transformer/translate", {"name": "transformer"}),
        ("/v1/models/a%20b/translate", {"name": "a%20b"}),
        ("/v1/models//translate", None),  # the router needs a name: its 404
        ("/v1/models/a/b/translate", None),  # two segments: the router's 404
        ("/v1/models/a/versions/1/translate", None),  # translate has no versioned route
        ("/v1/models/transformer/classify", None),
        ("/v2/models/lenet/infer", {"name": "lenet"}),
        ("/v2/models/lenet/versions/1/infer", {"name": "lenet", "version": "1"}),
        ("/v2/models/lenet/versions/x/infer", {"name": "lenet", "version": "x"}),  # the endpoint's 400
        ("/v2/models/lenet/versions//infer", None),
        ("/v2/models/lenet/versions/1/2/infer", None),
        ("/v2/models/lenet/ready", None),
    ],
)
def test_the_lean_layer_takes_exactly_the_paths_of_its_routes(path, params):
    from serving.app import LEAN_ROUTES
    from serving.protocol.lean import LeanRoutes

    layer = LeanRoutes(None, None, 1024, LEAN_ROUTES)
    found = layer.target({"type": "http", "method": "POST", "path": path})
    assert (found[1] if found else None) == params
    assert layer.target({"type": "http", "method": "GET", "path": path}) is None


@pytest.fixture(scope="module")
def small_limit_gateway(gateway):
    """The same repository served with a 1 KiB body limit."""
    repository = gateway.app.state.settings.model_repository
    with LiveServer(
        create_app(Settings(model_repository=repository, max_body_bytes=1024, grpc_port=0))
    ) as live:
        yield live


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
def test_a_translate_body_over_the_limit_is_a_413_on_the_lean_layer_too(small_limit_gateway, declared):
    """Translate requests skip the middleware stack (serving.protocol.lean); its body limit still holds."""
    body = json.dumps({"texts": ["x" * 2000]}).encode()
    content = body if declared else iter([body[i : i + 256] for i in range(0, len(body), 256)])
    reply = httpx.post(f"http://{small_limit_gateway.url}{TRANSLATE}", content=content)
    assert reply.status_code == 413 and "1024 byte limit" in reply.json()["error"]
    ready = httpx.get(f"http://{small_limit_gateway.url}/v2/health/ready")
    assert ready.status_code == 200


def test_lean_routes_with_another_method_or_path_get_the_routers_answer(gateway):
    for path in (TRANSLATE, INFER, "/v2/models/lenet/versions/1/infer"):
        assert httpx.get(f"http://{gateway.url}{path}").status_code == 405, path
    for path in ("/v1/models/a/b/translate", "/v2/models/a/b/infer"):
        assert httpx.post(f"http://{gateway.url}{path}", json={"texts": ["x"]}).status_code == 404, path


@pytest.mark.parametrize("version", ["1", "x"])
def test_versioned_infer_on_the_lean_layer_answers_as_the_router_did(gateway, version):
    body = tensor()
    reply = httpx.post(f"http://{gateway.url}/v2/models/lenet/versions/{version}/infer", json=body)
    if version == "1":
        plain = httpx.post(f"http://{gateway.url}{INFER}", json=body)
        assert reply.status_code == 200 and reply.json()["outputs"] == plain.json()["outputs"]
        assert reply.json()["model_version"] == "1"
    else:
        assert reply.status_code == 400 and "version" in reply.json()["error"]


def test_with_fastapi_telemetry_on_every_route_goes_through_the_stack(tmp_path, monkeypatch):
    """Traces must cover every route: the lean layer steps aside when FastAPI's telemetry is on."""
    from serving.protocol.lean import LeanRoutes

    app = create_app(Settings(model_repository=tmp_path))
    assert isinstance(app.build_middleware_stack(), LeanRoutes)
    telemetry = getattr(app, "_native_telemetry", None)
    if telemetry is None:
        pytest.skip("this FastAPI has no native telemetry to turn on")
    monkeypatch.setattr(telemetry, "enabled", lambda: True)
    assert not isinstance(app.build_middleware_stack(), LeanRoutes)


def test_the_lean_layer_answers_an_endpoints_error_once_and_never_after_its_answer_began():
    import asyncio
    from types import SimpleNamespace

    from fastapi.responses import JSONResponse

    from serving.protocol.lean import LeanRoute, LeanRoutes

    class Broken:  # a response that fails after it started
        async def __call__(self, scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            raise RuntimeError("the connection went away")

    async def refuse(request, name):
        raise ValueError(f"no {name}")

    async def broken(request, name):
        return Broken()

    async def handled(request, exc):
        return JSONResponse({"error": str(exc)}, status_code=400)

    app = SimpleNamespace(exception_handlers={Exception: handled})
    routes = [LeanRoute("/refuse/", "/x", refuse), LeanRoute("/broken/", "/x", broken)]
    layer = LeanRoutes(app, None, 1024, routes)

    def run(path):
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""}
        return sent, asyncio.run(layer(scope, receive, send))

    sent, _ = run("/refuse/a/x")  # an error before any answer: the app's handler answers it
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [400]
    assert b"no a" in sent[-1]["body"]
    with pytest.raises(RuntimeError, match="went away"):  # after the answer began: raised, not re-answered
        run("/broken/a/x")


# --- property-based: generated KServe v2 gRPC requests, near-valid and not ---
DATATYPES = (
    "BOOL",
    "UINT8",
    "INT8",
    "INT32",
    "INT64",
    "UINT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
    "",
    "COMPLEX",
)
CONTENTS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
)
SUITE_WIRE_EXAMPLES = 300
# what a request may be refused with: a client's mistake is never UNKNOWN or INTERNAL (a 500)
CLIENT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def _content_values(draw, field: str) -> list:
    if field == "bool_contents":
        return draw(st.lists(st.booleans(), max_size=8))
    if field == "bytes_contents":
        return draw(st.lists(st.binary(max_size=12), max_size=4))
    if field.startswith("fp"):
        return draw(st.lists(st.floats(width=32), max_size=8))
    low = 0 if field.startswith("uint") else -(2**31 if field == "int_contents" else 2**63)
    high = 2**32 - 1 if field == "uint_contents" else 2**64 - 1 if field == "uint64_contents" else -low - 1
    return draw(st.lists(st.integers(low, high), max_size=8))


@st.composite
def infer_requests(draw) -> service_pb2.ModelInferRequest:
    """A valid lenet request with some of its fields replaced: model, version, id, each input's name,
    datatype, shape and contents (raw bytes or typed fields), parameters of every kind, outputs."""
    request = grpc_request()
    if draw(st.booleans()):
        request.model_name = draw(st.sampled_from(["nope", "", "lenet\x00", "LENET"]))
    request.model_version = draw(st.sampled_from(["", "", "1", "2", "x", "-1"]))
    request.id = draw(st.text(max_size=6))
    if draw(st.booleans()):  # inputs rebuilt from scratch
        del request.inputs[:]
        del request.raw_input_contents[:]
        raw = draw(st.booleans())
        for _ in range(draw(st.integers(0, 3))):
            tensor = request.inputs.add(
                name=draw(st.sampled_from(["images", "images", "text", "x", ""])),
                datatype=draw(st.sampled_from(DATATYPES)),
            )
            dims = st.one_of(st.integers(-2, 32), st.sampled_from([SIZE, 2**31, 2**62]))
            tensor.shape.extend(draw(st.lists(dims, max_size=5)))
            if raw:
                request.raw_input_contents.append(draw(st.binary(max_size=2 * PIXELS)))
            elif (field := draw(st.sampled_from((*CONTENTS, None)))) is not None:
                getattr(tensor.contents, field).extend(_content_values(draw, field))
    for key in draw(
        st.lists(st.sampled_from(["timeout", "binary_data_output", "priority", "beam_size", "x"]), max_size=3)
    ):
        kind = draw(st.sampled_from(["bool_param", "int64_param", "string_param", "double_param", None]))
        value = {
            "bool_param": st.booleans(),
            "int64_param": st.integers(-(2**63), 2**63 - 1),
            "string_param": st.text(max_size=6),
            "double_param": st.floats(),
        }.get(kind)
        parameter = request.parameters[key]
        if value is not None:
            setattr(parameter, kind, draw(value))
    for name in draw(st.lists(st.sampled_from(["probabilities", "x", ""]), max_size=2)):
        request.outputs.add(name=name)
    return request


def test_generated_grpc_requests_are_answered_or_refused_as_a_client_error_and_never_break_the_server(
    gateway,
):
    """Hypothesis, derandomized in the suite (the same requests every run; ``KILN_WIRE_FUZZ_EXAMPLES=5000``
    explores at random): each request is answered, or refused
    with INVALID_ARGUMENT, NOT_FOUND or RESOURCE_EXHAUSTED and a message; never UNKNOWN or INTERNAL,
    and the server stays ready."""
    seen: dict[str, int] = {}
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        @wire_fuzz_settings(SUITE_WIRE_EXAMPLES)
        @given(infer_requests())
        def answered_or_refused(request):
            response = infer_or_refusal(stub, request, CLIENT_CODES, seen, timeout=60)
            assert response is None or (response.model_name == "lenet" and response.outputs), request

        answered_or_refused()
        assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=60).ready
    print(f"generated gRPC requests by outcome: {seen}")
    assert seen.get("OK", 0) > 0 and seen.get("INVALID_ARGUMENT", 0) > 0, seen  # both sides were reached


@st.composite
def binary_infer_bodies(draw) -> tuple[bytes, dict[str, str]]:
    """A KServe v2 binary-extension body (JSON header, then raw tensor bytes), from a valid lenet
    request with its header's inputs, sizes and parameters, the bytes and the header length changed."""
    entries = [{"name": "images", "datatype": "UINT8", "shape": [1, SIZE, SIZE, 1], "parameters": {}}]
    blobs = [bytes(PIXELS)]
    if draw(st.booleans()):
        entries, blobs = [], []
        for _ in range(draw(st.integers(0, 3))):
            size = draw(st.integers(0, 2 * PIXELS))
            entries.append(
                {
                    "name": draw(st.sampled_from(["images", "text", ""])),
                    "datatype": draw(st.sampled_from(DATATYPES)),
                    "shape": draw(st.lists(st.integers(-2, 2**40), max_size=4)),
                    "parameters": {
                        "binary_data_size": draw(st.one_of(st.just(size), st.integers(-5, 10**12)))
                    },
                }
            )
            blobs.append(draw(st.binary(min_size=size, max_size=size)))
    else:
        entries[0]["parameters"]["binary_data_size"] = draw(
            st.sampled_from([PIXELS, PIXELS - 1, PIXELS + 1, 0])
        )
    header = {"inputs": entries}
    if draw(st.booleans()):
        header["outputs"] = [
            {
                "name": draw(st.sampled_from(["probabilities", "x"])),
                "parameters": {
                    "binary_data": draw(st.sampled_from([True, False, True, False, 1, "yes"])),
                    "classification": draw(st.sampled_from([0, 3, 0, 3, -1, 10**9, "2"])),
                },
            }
        ]
    raw_header = json.dumps(header).encode()
    length = draw(st.sampled_from([len(raw_header)] * 3 + [0, len(raw_header) + 7, -3, 10**12]))
    headers = {"Inference-Header-Content-Length": str(length), "Content-Type": "application/octet-stream"}
    trailing = draw(st.sampled_from([b"", b"", b"", b"\0junk"]))  # bytes past the last tensor
    return raw_header + b"".join(blobs) + trailing, headers


def test_generated_binary_extension_bodies_get_a_4xx_or_an_answer_and_never_a_5xx(gateway):
    """The KServe v2 binary tensor extension, generated (schemathesis sees only the JSON form):
    every body is answered or refused with a 4xx carrying a JSON error; the gateway stays ready."""
    seen: dict[int, int] = {}
    url = f"http://{gateway.url}{INFER}"
    with httpx.Client(timeout=60) as client:

        @wire_fuzz_settings(SUITE_WIRE_EXAMPLES)
        @given(binary_infer_bodies())
        def answered_or_refused(body):
            content, headers = body
            response = client.post(url, content=content, headers=headers)
            assert response.status_code < 500, (response.status_code, response.text, headers, content[:300])
            if response.status_code >= 400:
                assert response.json()["error"], response.text
            seen[response.status_code] = seen.get(response.status_code, 0) + 1

        answered_or_refused()
        assert client.get(f"http://{gateway.url}/v2/health/ready").status_code == 200
    print(f"generated binary-extension bodies by status: {seen}")
    assert seen.get(200, 0) > 0 and seen.get(400, 0) > 0, seen  # both sides were reached


@pytest.mark.parametrize("path", [CLASSIFY, TRANSLATE, INFER])
def test_a_compressed_body_that_inflates_past_the_limit_is_a_413_on_every_route(small_limit_gateway, path):
    """Inflation stops at the body limit (1 KiB here), on the friendly routes as on KServe infer."""
    bomb = gzip.compress(b" " * (1 << 18))  # 256 KiB of whitespace in 290 bytes
    reply = httpx.post(
        f"http://{small_limit_gateway.url}{path}", content=bomb, headers={"content-encoding": "gzip"}
    )
    assert reply.status_code == 413, reply.text
    assert reply.json() == {"error": "decompressed request body exceeds the 1024 byte limit"}


@pytest.mark.parametrize("path", [CLASSIFY, TRANSLATE, INFER])
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_body_cut_short_or_with_bytes_after_its_end_is_a_400_naming_it(gateway, path, encoding):
    """zlib hands back what a cut stream holds so far without a word: that prefix was parsed as the body."""
    body = json.dumps(tensor() if path == INFER else {"texts": ["un"]}).encode()
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    for bad in (packed[:-6], packed + b"trailing"):
        headers = {"content-encoding": encoding, "content-type": "application/json"}
        reply = httpx.post(f"http://{gateway.url}{path}", content=bad, headers=headers)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"].startswith(f"request body is not valid {encoding} data")


def test_a_gzip_body_of_several_members_is_read_whole_and_within_the_limit_over_all():
    """RFC 1952's members one after another, as gzip.decompress reads them (only the first was read)."""
    from serving.errors import PayloadTooLarge
    from serving.protocol.limits import inflate

    assert inflate(gzip.compress(b"ab") + gzip.compress(b"cd"), "x-gzip", 10) == b"abcd"
    with pytest.raises(PayloadTooLarge):
        inflate(gzip.compress(b"a" * 6) + gzip.compress(b"b" * 6), "gzip", 10)
