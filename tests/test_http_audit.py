"""Defects an adversarial HTTP client found, each pinned: sizes stated in headers with thousands of
digits, a binary_data_size of the wrong type, the repository index's ``ready`` flag, a multipart media
type in another case, and statuses the OpenAPI document left out. Each request is followed by one
the gateway must still answer."""

from __future__ import annotations

import base64
import io
import json
import socket

import httpx
import pytest

from serving.app import create_app
from serving.errors import BadRequest
from serving.protocol.request_values import SIZE_DIGITS, stated_size
from serving.protocol.v2_codec import parse_infer
from serving.settings import Settings
from tests.repo_fixtures import SIZE, LiveServer, build_classifier_repository

PIXELS = SIZE * SIZE
INFER = "/v2/models/lenet/infer"
INFER_BODY = json.dumps(
    {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, SIZE, SIZE, 1], "data": [0] * PIXELS}]}
).encode()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    repository = build_classifier_repository(tmp_path_factory.mktemp("audit") / "repo")
    with LiveServer(create_app(Settings(model_repository=repository, grpc_port=0))) as live:
        yield live


def exchange(url: str, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` byte for byte on a new connection; the status and body of the one answer."""
    host, port = url.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += _received(sock)
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        length = next(
            int(v) for n, _, v in (x.partition(b":") for x in lines[1:]) if n.lower() == b"content-length"
        )
        while len(body) < length:
            body += _received(sock)
    return int(lines[0].split()[1]), body[:length]


def _received(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    assert chunk, "the gateway closed the connection without an answer"
    return chunk


def still_answers(gateway: LiveServer) -> None:
    assert httpx.get(f"http://{gateway.url}/v2/health/ready").status_code == 200
    assert httpx.post(f"http://{gateway.url}{INFER}", content=INFER_BODY).status_code == 200


def test_a_stated_size_is_read_whatever_its_leading_zeros_and_capped_past_any_body() -> None:
    assert stated_size(b"0" * 5000 + b"42") == 42
    assert stated_size("0" * 5000) == 0
    assert stated_size("9" * 5000) == stated_size(b"1" + b"0" * SIZE_DIGITS) == 10**SIZE_DIGITS
    assert stated_size(b"123") == 123
    assert [stated_size(v) for v in ("", "-1", "+1", "1.0", "²", " 1")] == [None] * 6


@pytest.mark.parametrize("path", [INFER, "/v1/models/lenet/classify"])
def test_a_content_length_padded_with_thousands_of_zeros_is_read_as_the_length_it_states(
    gateway, path
) -> None:
    """RFC 9110's Content-Length is 1*DIGIT: leading zeros are valid. int() refused over 4 300 digits,
    inside the parser's callback (400 "User callback error") or the body limit (500)."""
    body = INFER_BODY if path == INFER else b"{}"
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %s%d\r\n\r\n" % (
        path.encode(),
        b"0" * 5000,
        len(body),
    )
    status, answer = exchange(gateway.url, head + body)
    assert status == (200 if path == INFER else 422), answer  # classify: {} lacks its images
    status, answer = exchange(
        gateway.url, b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\n" % (b"0" * 5000)
    )
    assert (status, answer) == (200, b"")
    still_answers(gateway)


def test_an_inference_header_content_length_of_thousands_of_digits_is_a_400_naming_the_header(
    gateway,
) -> None:
    headers = {"Inference-Header-Content-Length": "9" * 5000}
    response = httpx.post(f"http://{gateway.url}{INFER}", content=INFER_BODY, headers=headers)
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert message.startswith("Inference-Header-Content-Length is 9999") and "(5000 digits)" in message
    assert len(message) < 200  # the stated value shown cut short, not echoed whole
    headers["Inference-Header-Content-Length"] = "0" * 5000 + str(len(INFER_BODY))  # zeros: its value
    assert httpx.post(f"http://{gateway.url}{INFER}", content=INFER_BODY, headers=headers).status_code == 200
    still_answers(gateway)


@pytest.mark.parametrize("size", ["256", 256.0, True, -1, [256]])
def test_a_binary_data_size_that_is_not_a_non_negative_integer_is_refused_as_such(size) -> None:
    header = {
        "inputs": [
            {
                "name": "images",
                "datatype": "UINT8",
                "shape": [1, SIZE, SIZE, 1],
                "parameters": {"binary_data_size": size},
            }
        ]
    }
    text = json.dumps(header).encode()
    with pytest.raises(BadRequest) as refused:
        parse_infer(text + bytes(PIXELS), str(len(text)), "lenet", "")
    assert refused.value.message == (
        f"input 'images': binary_data_size must be a non-negative integer, got {size!r}"
    )  # it said the size "does not fit the 256 bytes of binary data" that it fitted exactly


@pytest.mark.parametrize("ready", ['"false"', '"true"', "0", "1", "null"])
def test_the_repository_index_refuses_a_ready_flag_that_is_not_a_boolean(gateway, ready) -> None:
    """Triton reads ``ready`` as a JSON boolean and refuses anything else; "false" was read as true."""
    url = f"http://{gateway.url}/v2/repository/index"
    response = httpx.post(url, content=f'{{"ready": {ready}}}')
    assert response.status_code == 400, response.text
    assert (
        response.json()["error"]
        == f"the repository index's 'ready' must be true or false, got {json.loads(ready)!r}"
    )
    assert [m["name"] for m in httpx.post(url, content='{"ready": false}').json()] == ["lenet"]
    assert [m["name"] for m in httpx.post(url).json()] == ["lenet"]
    still_answers(gateway)


@pytest.mark.parametrize("media_type", ["Multipart/Form-Data", "MULTIPART/FORM-DATA", "multipart/Form-data"])
def test_a_multipart_classify_body_is_read_as_a_form_whatever_the_case_of_its_media_type(
    gateway, media_type
) -> None:
    """Media types are case-insensitive (RFC 9110 8.3.1); another case was parsed as JSON (400)."""
    from PIL import Image

    png = io.BytesIO()
    Image.new("L", (SIZE, SIZE)).save(png, "PNG")
    form = httpx.Request("POST", "http://x/", files={"files": ("a.png", png.getvalue(), "image/png")})
    body = form.read()
    kind, _, rest = form.headers["content-type"].partition(";")
    assert kind == "multipart/form-data"
    headers = {"content-type": f"{media_type};{rest}"}
    url = f"http://{gateway.url}/v1/models/lenet/classify"
    response = httpx.post(url, content=body, headers=headers)
    assert response.status_code == 200, response.text
    b64 = base64.b64encode(png.getvalue()).decode()
    assert response.json() == httpx.post(url, json={"images": [b64]}).json()
    still_answers(gateway)


def test_the_openapi_document_lists_the_422_of_generate_and_the_400_and_body_of_the_repository_index() -> (
    None
):
    """A translator's generate refuses options it cannot honour with a 422 (beam_size 100), and the
    repository index a body it cannot read with a 400: neither status was documented, nor the body."""
    operations = create_app(Settings(grpc_port=0)).openapi()["paths"]
    for path in (
        "/v2/models/{name}/generate",
        "/v2/models/{name}/generate_stream",
        "/v2/models/{name}/versions/{version}/generate",
        "/v2/models/{name}/versions/{version}/generate_stream",
    ):
        assert "422" in operations[path]["post"]["responses"], path
    index = operations["/v2/repository/index"]["post"]
    assert sorted(index["responses"]) == ["200", "400", "413", "503"]
    body = index["requestBody"]
    assert body["required"] is False
    assert body["content"]["application/json"]["schema"]["properties"]["ready"]["type"] == "boolean"


def test_an_input_with_both_json_data_and_a_binary_data_size_is_refused_naming_both() -> None:
    """The binary data was used and the JSON values dropped without a word."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "UINT8",
                    "shape": [1, 2],
                    "data": [7, 7],
                    "parameters": {"binary_data_size": 2},
                }
            ]
        }
    ).encode()
    with pytest.raises(BadRequest, match="both 'data' and a 'binary_data_size' parameter"):
        parse_infer(header + bytes(2), str(len(header)), "m", "1")


@pytest.mark.parametrize(("timeout", "seconds"), [(0, None), (250_000, 0.25)])
def test_a_timeout_parameter_of_zero_is_no_timeout_as_triton_reads_it(timeout, seconds) -> None:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [1]}]})
    with_timeout = json.dumps({**json.loads(body), "parameters": {"timeout": timeout}}).encode()
    assert parse_infer(with_timeout, None, "m", "1").request.timeout_s == seconds


@pytest.mark.parametrize("timeout", [-1, 1.5, "100", True, 2**63])
def test_a_timeout_parameter_that_is_not_an_int64_of_microseconds_is_refused(timeout) -> None:
    body = {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [1]}], "parameters": {}}
    body["parameters"]["timeout"] = timeout
    with pytest.raises(BadRequest, match="parameter 'timeout' must be a number of microseconds"):
        parse_infer(json.dumps(body).encode(), None, "m", "1")
