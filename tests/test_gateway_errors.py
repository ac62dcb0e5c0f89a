"""Client mistakes get their documented 4xx with a JSON error, overload and deadlines are bounded,
and the gateway never imports torch."""

from __future__ import annotations

import base64
import io
import json
import struct
import subprocess
import sys
import threading
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from serving.app import create_app
from serving.execution.onnxruntime import OnnxRuntimeBackend
from serving.execution.ort_options import OrtOptions
from serving.execution.repository import Repository
from serving.metrics import GatewayMetrics
from serving.settings import Settings
from tests.repo_fixtures import SIZE, LiveServer, build_classifier_repository
from tests.waiting import DEADLINE_S, eventually

MAX_IMAGES = Settings.model_fields["max_images"].default  # the fixture keeps the default


@pytest.fixture(scope="session")
def repository(tmp_path_factory):
    return build_classifier_repository(tmp_path_factory.mktemp("errors") / "repo")


@pytest.fixture(scope="module")
def server(repository):
    settings = Settings(
        model_repository=repository, grpc_port=0, max_body_bytes=200_000, max_image_pixels=64 * 64
    )
    with LiveServer(create_app(settings)) as live:
        yield live


def png(size: int = SIZE) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size), 7, dtype=np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG declaring ``width`` x ``height`` grey pixels in its IHDR, with a few bytes of pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64)))


def noisy_png(size: int = 32) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(buffer, "PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def v2_json(datatype="UINT8", shape=(1, SIZE, SIZE, 1), data=None) -> dict:
    count = int(np.prod(shape))
    return {
        "inputs": [
            {"name": "images", "datatype": datatype, "shape": list(shape), "data": data or [1] * count}
        ]
    }


BINARY_HEADER = json.dumps(
    {
        "inputs": [
            {
                "name": "images",
                "datatype": "UINT8",
                "shape": [1, SIZE, SIZE, 1],
                "parameters": {"binary_data_size": 64},
            }
        ]
    }
).encode()

CLASSIFY = "/v1/models/lenet/classify"
INFER = "/v2/models/lenet/infer"
BAD_REQUESTS = {
    "corrupt image": ("post", CLASSIFY, {"json": {"images": [b64(b"\x89PNG\r\n\x1a\nnot really")]}}, 400),
    "truncated image": (
        "post",
        CLASSIFY,
        {"json": {"images": [b64(noisy_png()[: len(noisy_png()) // 2])]}},
        400,
    ),
    "not base64": ("post", CLASSIFY, {"json": {"images": ["***"]}}, 400),
    "decompression bomb": ("post", CLASSIFY, {"json": {"images": [b64(png(size=100))]}}, 413),
    "a header over Pillow's own 89 M pixels": (
        "post",
        CLASSIFY,
        {"json": {"images": [b64(png_header(10_000, 9_000))]}},
        413,
    ),
    "unknown field classify": ("post", CLASSIFY, {"json": {"images": [b64(png())], "foo": 1}}, 422),
    "multipart top_k of 5000 digits": (
        "post",
        CLASSIFY,
        {"data": {"top_k": "9" * 5000}, "files": {"files": ("a.png", png())}},
        422,
    ),
    "multipart with two files over the limit": (
        "post",
        CLASSIFY,
        {"files": [("files", (f"{i}.png", b"x")) for i in range(MAX_IMAGES + 2)]},
        413,
    ),
    "negative top_k": ("post", CLASSIFY, {"json": {"images": [b64(png())], "top_k": -1}}, 422),
    "huge top_k": ("post", CLASSIFY, {"json": {"images": [b64(png())], "top_k": 10**6}}, 422),
    "no images": ("post", CLASSIFY, {"json": {"images": []}}, 422),
    "invalid JSON classify": (
        "post",
        CLASSIFY,
        {"content": b"{nope", "headers": {"content-type": "application/json"}},
        400,
    ),
    "multipart without files": (
        "post",
        CLASSIFY,
        {"data": {"top_k": "1"}, "files": {"other": ("a", b"x")}},
        422,
    ),
    "unknown model classify": ("post", "/v1/models/nope/classify", {"json": {"images": [b64(png())]}}, 404),
    "path trick": ("get", "/v2/models/..%2Flenet", {}, 404),
    "unknown model infer": ("post", "/v2/models/nope/infer", {"json": v2_json()}, 404),
    "unknown version": ("get", "/v2/models/lenet/versions/9", {}, 404),
    "non-numeric version": ("get", "/v2/models/lenet/versions/x1", {}, 400),
    "invalid JSON infer": ("post", INFER, {"content": b"{nope"}, 400),
    "wrong dtype": ("post", INFER, {"json": v2_json(datatype="FP32")}, 400),
    "wrong shape": ("post", INFER, {"json": v2_json(shape=(1, SIZE, SIZE))}, 400),
    "batch above max_batch_size": ("post", INFER, {"json": v2_json(shape=(9, SIZE, SIZE, 1))}, 400),
    "data size mismatch": ("post", INFER, {"json": v2_json(data=[1, 2, 3])}, 400),
    "unknown output": ("post", INFER, {"json": {**v2_json(), "outputs": [{"name": "nope"}]}}, 400),
    "bad binary header length": (
        "post",
        INFER,
        {"content": BINARY_HEADER + b"\0" * 64, "headers": {"Inference-Header-Content-Length": "abc"}},
        400,
    ),
    "binary header past the body": (
        "post",
        INFER,
        {
            "content": BINARY_HEADER,
            "headers": {"Inference-Header-Content-Length": str(len(BINARY_HEADER) + 5)},
        },
        400,
    ),
    "binary data too short": (
        "post",
        INFER,
        {
            "content": BINARY_HEADER + b"\0" * 10,
            "headers": {"Inference-Header-Content-Length": str(len(BINARY_HEADER))},
        },
        400,
    ),
    "oversized body": ("post", INFER, {"content": b"x" * 300_000}, 413),
    "unsupported content encoding": (
        "post",
        INFER,
        {"content": b"{}", "headers": {"content-encoding": "br"}},
        415,
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_its_documented_4xx_with_a_json_error_and_the_server_keeps_serving(server, case):
    method, path, kwargs, status = BAD_REQUESTS[case]
    response = httpx.request(method, f"http://{server.url}{path}", **kwargs)
    assert response.status_code == status, response.text
    assert isinstance(response.json()["error"], str) and response.json()["error"]
    ok = httpx.post(f"http://{server.url}{CLASSIFY}", json={"images": [b64(png())]})
    assert ok.status_code == 200, ok.text
    assert httpx.post(f"http://{server.url}{INFER}", json=v2_json()).status_code == 200


def test_error_messages_name_the_input_and_expected_versus_got(server):
    response = httpx.post(f"http://{server.url}{INFER}", json=v2_json(shape=(1, SIZE, SIZE)))
    assert (
        response.json()["error"]
        == f"input 'images': expected shape [-1, {SIZE}, {SIZE}, 1], got [1, {SIZE}, {SIZE}]"
    )
    response = httpx.post(f"http://{server.url}{INFER}", json=v2_json(datatype="FP32"))
    assert response.json()["error"] == "input 'images': expected datatype UINT8, got FP32"


class SlowSession:
    """An ONNX Runtime session that holds each batch until released, to fill queues deterministically."""

    entered = threading.Event()  # a batch reached the session
    release = threading.Event()

    def __init__(self, path, sess_options=None, providers=None):
        import onnxruntime as ort

        self.session = ort.InferenceSession(path, sess_options=sess_options, providers=providers)

    def run(self, names, feeds):
        self.entered.set()
        self.release.wait(timeout=60)
        return self.session.run(names, feeds)


def slow_gateway(repository, timeout_s: float) -> tuple[LiveServer, GatewayMetrics]:
    """A gateway whose lenet queue holds 2 requests and whose session waits for ``SlowSession.release``."""
    settings = Settings(model_repository=repository, grpc_port=0, retry_after_s=2, shutdown_grace_s=5)
    # No lone-request session: its warm-up at load would be held by SlowSession too.
    options = OrtOptions(
        max_queue_size=2,
        default_timeout_s=timeout_s,
        retry_after_s=2,
        shutdown_grace_s=5,
        lone_request_threads=0,
    )
    metrics = GatewayMetrics()
    backend = OnnxRuntimeBackend(
        Repository(repository), options, session_factory=SlowSession, metrics=metrics
    )
    SlowSession.entered.clear()
    SlowSession.release.clear()
    return LiveServer(create_app(settings, backend=backend)), metrics


def start_calls(url: str, count: int) -> tuple[list[threading.Thread], list[httpx.Response]]:
    """``count`` infer requests in threads; the first is held by the session, the others queue."""
    results: list[httpx.Response] = []

    def call() -> None:
        results.append(httpx.post(url, json=v2_json(), timeout=120))

    threads = [threading.Thread(target=call) for _ in range(count)]
    threads[0].start()
    assert SlowSession.entered.wait(DEADLINE_S)
    for thread in threads[1:]:
        thread.start()
    return threads, results


def test_a_full_queue_answers_429_with_retry_after_and_the_queued_requests_are_served(repository):
    live, metrics = slow_gateway(repository, timeout_s=120)
    with live as server:
        url = f"http://{server.url}{INFER}"
        threads, results = start_calls(url, 3)  # one running, two queued
        try:
            assert eventually(lambda: metrics.sample("kiln_queue_depth", model="lenet") == 2)
            refused = httpx.post(url, json=v2_json())
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == "2"
            assert "queue is full" in refused.json()["error"]
        finally:
            SlowSession.release.set()
            for thread in threads:
                thread.join()
        assert [r.status_code for r in results] == [200, 200, 200]


def test_requests_past_their_deadline_answer_504_and_leave_the_server_usable(repository):
    with slow_gateway(repository, timeout_s=0.5)[0] as server:
        url = f"http://{server.url}{INFER}"
        threads, results = start_calls(url, 2)  # one held by the session, one queued: neither can finish
        for thread in threads:
            thread.join()
        assert [r.status_code for r in results] == [504, 504]
        assert "timed out" in results[0].json()["error"]
        SlowSession.release.set()
        assert httpx.post(url, json=v2_json()).status_code == 200


def test_the_gateway_never_imports_torch():
    code = (
        "import sys, serving, serving.app, serving.__main__, serving.execution.onnxruntime, serving.protocol.v1, "
        "serving.protocol.v2, serving.protocol.images, serving.protocol.tensors, serving.execution.batcher\n"
        "serving.app.create_app(serving.settings.Settings())\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
