"""Large KServe v2 JSON bodies are parsed in a helper process (serving/protocol/json_offload.py): the
same request, arrays and errors as parsed in place, small and binary bodies untouched, a dead helper
replaced, and through the gateway the same answers as the binary extension gives."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal

import httpx
import numpy as np
import pytest

from serving.app import create_app
from serving.errors import BadRequest
from serving.protocol.json_offload import JsonOffload
from serving.protocol.v2_codec import HEADER_LENGTH, parse_infer
from serving.settings import Settings
from tests.repo_fixtures import SIZE, LiveServer, build_classifier_repository
from tests.test_gateway_rest import png

X = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5) / 7


def _json_body(x: np.ndarray = X, **extra: object) -> bytes:
    tensor = {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
    return json.dumps(
        {"inputs": [tensor], "outputs": [{"name": "y", "parameters": {"binary_data": True}}], **extra}
    ).encode()


def _parse(offload: JsonOffload, body: bytes, header_length: str | None = None):
    return asyncio.run(offload.parse_infer(body, header_length, "m", "2"))


@pytest.fixture
def offload():
    parser = JsonOffload(offload_bytes=64)
    yield parser
    parser.close()


def _helper_pids(parser: JsonOffload) -> set[int]:
    pool = parser._pool
    return set() if pool is None else {p.pid for p in (pool._processes or {}).values()}


def test_a_large_json_body_is_parsed_by_the_helper_into_the_same_request(offload) -> None:
    body = _json_body(id="r1", parameters={"beam_size": 3})
    assert len(body) >= offload.offload_bytes
    parsed, expected = _parse(offload, body), parse_infer(body, None, "m", "2")
    helpers = _helper_pids(offload)
    assert helpers and os.getpid() not in helpers  # parsed in another process
    np.testing.assert_array_equal(parsed.request.inputs["x"], X)
    assert parsed.request.inputs["x"].dtype == np.float32
    assert (parsed.request.model, parsed.request.version) == ("m", "2")
    assert parsed.request.parameters == expected.request.parameters
    assert parsed.outputs == expected.outputs and parsed.binary_default == expected.binary_default


def test_small_and_binary_bodies_are_parsed_in_place() -> None:
    parser = JsonOffload(offload_bytes=4096)
    try:
        assert _parse(parser, _json_body()).request.inputs["x"].shape == X.shape
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [1, 2048],
                        "parameters": {"binary_data_size": 8192},
                    }
                ]
            }
        ).encode()
        parsed = _parse(parser, header + bytes(8192), str(len(header)))  # 8 KB of body, 100 B of JSON
        assert parsed.request.inputs["x"].shape == (1, 2048)
        assert parser._pool is None  # no helper started for either
    finally:
        parser.close()
    assert _parse(JsonOffload(offload_bytes=0), _json_body() * 1).request.inputs["x"].shape == X.shape


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b'{"inputs": [' + b" " * 100 + b"]}", None, "needs a non-empty 'inputs' list"),
        (b"[" + b"1," * 100 + b"1]", None, "must be a JSON object"),
        (_json_body(), "many", "must be a non-negative integer"),
    ],
)
def test_the_helpers_errors_are_the_ones_parsing_in_place_raises(
    offload, body, header_length, message
) -> None:
    with pytest.raises(BadRequest, match=message):
        _parse(offload, body, header_length)


def test_a_large_translate_body_is_validated_by_the_helper(offload) -> None:
    from serving.errors import UnprocessableInput
    from serving.protocol.translate import parse_body

    raw = json.dumps({"texts": ["\u00e9t\u00e9 " * 50, "one two"], "beam_size": 3, "n_best": 2}).encode()
    request = asyncio.run(offload.call(len(raw), parse_body, raw))
    assert request == parse_body(raw) and _helper_pids(offload)
    bad = json.dumps({"texts": ["one"] * 10, "beam_size": 99}).encode()
    with pytest.raises(UnprocessableInput, match="beam_size"):
        asyncio.run(offload.call(len(bad), parse_body, bad))


def test_a_helper_that_died_is_replaced(offload) -> None:
    _parse(offload, _json_body())
    for pid in _helper_pids(offload):
        os.kill(pid, signal.SIGKILL)
    for _ in range(3):  # the dead helper's pool is noticed, then a new one parses
        np.testing.assert_array_equal(_parse(offload, _json_body()).request.inputs["x"], X)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    repository = build_classifier_repository(tmp_path_factory.mktemp("offload") / "repo")
    with LiveServer(
        create_app(Settings(model_repository=repository, json_offload_bytes=1024, grpc_port=0))
    ) as live:
        yield live


def test_the_gateway_answers_a_large_json_body_as_it_answers_the_same_tensor_in_binary(gateway) -> None:
    images = np.random.default_rng(7).integers(0, 256, (8, SIZE, SIZE, 1), dtype=np.uint8)
    url = f"http://{gateway.url}/v2/models/lenet/infer"
    tensor = {"name": "images", "datatype": "UINT8", "shape": list(images.shape)}
    wanted = {"outputs": [{"name": "logits", "parameters": {"binary_data": False}}]}
    as_json = json.dumps({"inputs": [{**tensor, "data": images.ravel().tolist()}], **wanted}).encode()
    assert len(as_json) > 1024  # parsed by the helper
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": images.size}}], **wanted})
    binary = header.encode() + images.tobytes()
    answers = []
    for content, headers in ((as_json, {}), (binary, {HEADER_LENGTH: str(len(header))})):
        reply = httpx.post(url, content=content, headers=headers, timeout=60)
        assert reply.status_code == 200, reply.text
        output = reply.json()["outputs"][0]
        answers.append((output["shape"], output["data"]))
    assert answers[0] == answers[1]
    assert answers[0][0][0] == 8 and len(answers[0][1]) == 8 * answers[0][0][1]
    bad = httpx.post(url, content=as_json.replace(b'"UINT8"', b'"UINT9"'), timeout=60)
    assert bad.status_code == 400 and "UINT9" in bad.json()["error"]


def test_the_gateway_classifies_a_large_json_body_as_it_classifies_the_same_images_sent_as_files(
    gateway,
) -> None:
    """The friendly classify route's JSON (base64 images) is read by the helper when large; errors too."""
    images = [png(seed) for seed in range(6)]
    url = f"http://{gateway.url}/v1/models/lenet/classify"
    body = json.dumps({"images": [base64.b64encode(i).decode() for i in images], "top_k": 3}).encode()
    assert len(body) > 1024  # read by the helper
    as_json = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=60)
    files = [("files", (f"{n}.png", image, "image/png")) for n, image in enumerate(images)]
    as_files = httpx.post(url, files=files, data={"top_k": "3"}, timeout=60)
    assert as_json.status_code == as_files.status_code == 200, (as_json.text, as_files.text)
    assert as_json.json() == as_files.json()
    refused = json.dumps({"images": ["*" * 2000], "top_k": 3}).encode()
    bad = httpx.post(url, content=refused, headers={"content-type": "application/json"}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"] == "image 0: not valid base64"


def test_a_large_generate_body_is_mapped_by_the_helper_into_the_same_request(offload) -> None:
    """Triton's generate extension takes its tensors as JSON too: a large body is parsed off the loop."""
    from serving.execution.base import ModelMetadata, TensorMeta
    from serving.protocol.generate import parse_generate

    meta = ModelMetadata("m", ["1"], "onnx", [TensorMeta("x", "FP32", [-1, 3, 5])], [])
    raw = json.dumps({"x": X.ravel().tolist(), "id": "g1", "beam_size": 3}).encode()
    assert len(raw) >= offload.offload_bytes
    request = asyncio.run(offload.call(len(raw), parse_generate, raw, meta, "1"))
    assert _helper_pids(offload)
    expected = parse_generate(raw, meta, "1")
    np.testing.assert_array_equal(request.inputs["x"], expected.inputs["x"])
    assert (request.request_id, request.parameters) == (expected.request_id, expected.parameters)
    with pytest.raises(BadRequest, match="generate request"):
        asyncio.run(offload.call(len(raw), parse_generate, raw[:-1], meta, "1"))


def test_the_gateway_answers_a_large_generate_body(gateway) -> None:
    images = np.random.default_rng(3).integers(0, 256, (1, SIZE, SIZE, 1), dtype=np.uint8)
    body = json.dumps({"images": images.ravel().tolist()}).encode()
    assert len(body) > 1024  # parsed by the helper
    reply = httpx.post(f"http://{gateway.url}/v2/models/lenet/generate", content=body, timeout=60)
    assert reply.status_code == 200, reply.text
    tensor = {
        "name": "images",
        "datatype": "UINT8",
        "shape": list(images.shape),
        "data": images.ravel().tolist(),
    }
    infer = httpx.post(f"http://{gateway.url}/v2/models/lenet/infer", json={"inputs": [tensor]}, timeout=60)
    assert reply.json()["logits"] == infer.json()["outputs"][0]["data"]
