"""A client on the wrong port, or speaking the wrong protocol, is told so at once (h2_misdirected).

Users swap the gateway's HTTP (--http-port) and gRPC (--grpc-port) ports, curl the gRPC port, send
TLS to a plaintext port or put a balancer sending PROXY headers in front. The gRPC port used to write
its binary SETTINGS and close: curl said "Received HTTP/0.9 when not allowed", tritonclient.http
"Expected HTTP/, RTSP/ or ICE/"; the HTTP port logged TLS and PROXY headers as "Invalid method
encountered". Each now names the mistake.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import grpc
import pytest
import tritonclient.http as httpclient
from fastapi import FastAPI
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from serving.protocol import h2_wire as w
from serving.protocol.grpc_server import start_grpc_server
from serving.protocol.http1 import http_protocol
from tests.h2_client import Harness, RawClient
from tests.repo_fixtures import LiveServer
from tests.test_grpc import FakeBackend, LoopThread

WAIT_S = 10.0  # a failure bound on an answer that comes at once, never waited out when it does
CLIENT_HELLO = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32)  # the start of a TLS ClientHello
PROXY_V1 = b"PROXY TCP4 10.0.0.1 10.0.0.2 51000 8001\r\n"
PROXY_V2 = b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes(12)


@pytest.fixture(scope="module")
def grpc_port(loop: LoopThread) -> Iterator[int]:
    handle = loop.run(start_grpc_server(FakeBackend(), "127.0.0.1", 0))
    yield handle.port
    loop.run(handle.stop(1.0))


@pytest.fixture(scope="module")
def http_port() -> Iterator[int]:
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn's own protocol answers these")
    with LiveServer(FastAPI(), http=protocol) as live:
        yield live.port


def _all_until_close(port: int, data: bytes) -> bytes:
    """Everything the server writes to a connection that sent ``data``, up to its close."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall(data)
        while chunk := sock.recv(65536):
            got += chunk
    return got


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /v2/health/ready HTTP/1.1\r\nHost: kiln\r\n\r\n",
        b"POST /v2/models/m/infer HTTP/1.1\r\nHost: kiln\r\ncontent-type: application/json\r\n"
        b"content-length: 2\r\n\r\n{}",
        b"POST /inference.GRPCInferenceService/ServerLive HTTP/1.1\r\nHost: kiln\r\n"
        b"content-type: application/grpc-web+proto\r\ncontent-length: 0\r\n\r\n",
    ],
    ids=["curl-get", "json-post", "grpc-web-over-http1"],
)
def test_an_http_1_1_request_on_the_grpc_port_gets_a_505_naming_the_http_port(
    grpc_port: int, request_head: bytes
) -> None:
    answer = _all_until_close(grpc_port, request_head)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 505 "), answer[:60]  # no binary SETTINGS before it
    assert b"gRPC port" in body and b"--http-port" in body


def test_a_head_request_on_the_grpc_port_gets_its_505_without_a_body(grpc_port: int) -> None:
    answer = _all_until_close(grpc_port, b"HEAD / HTTP/1.1\r\nHost: kiln\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 505 ") and answer.endswith(b"\r\n\r\n")


def test_tritonclient_http_on_the_grpc_port_raises_the_port_mixup_not_a_parse_error(grpc_port: int) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{grpc_port}", network_timeout=WAIT_S)
    try:
        with pytest.raises(InferenceServerException, match="--http-port"):
            client.get_server_metadata()
    finally:
        client.close()


@pytest.mark.parametrize(
    ("first_bytes", "named"),
    [
        (CLIENT_HELLO, b"TLS handshake"),
        (PROXY_V1, b"PROXY protocol"),
        (PROXY_V2, b"PROXY protocol"),
        (b"\x00garbage", b"no HTTP/2 connection preface"),
    ],
    ids=["tls", "proxy-v1", "proxy-v2", "other"],
)
def test_other_bytes_on_the_grpc_port_get_settings_then_a_goaway_saying_what_arrived(
    grpc_port: int, first_bytes: bytes, named: bytes
) -> None:
    client = RawClient(grpc_port)
    try:
        client.send(first_bytes)
        assert client.frame()[0] == w.SETTINGS
        goaway = client.until(w.GOAWAY)
        assert goaway is not None and int.from_bytes(goaway[3][4:8], "big") == w.PROTOCOL_ERROR
        assert named in goaway[3][8:]
        assert client.frame() is None  # then closed
    finally:
        client.close()


def test_a_grpc_client_on_the_grpc_port_is_still_served(grpc_port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=WAIT_S).live


def test_a_server_stopping_before_a_clients_preface_still_sends_its_settings_first() -> None:
    h2 = Harness(preface=False)
    try:
        h2.connection.goaway()
        h2.advance(0)  # the loop step that writes it
        assert [kind for kind, *_ in h2.frames()] == [w.SETTINGS, w.WINDOW_UPDATE, w.GOAWAY]
    finally:
        h2.close()


@pytest.mark.parametrize(
    ("first_bytes", "named"),
    [(CLIENT_HELLO, b"TLS handshake"), (PROXY_V1, b"PROXY protocol"), (PROXY_V2, b"PROXY protocol")],
    ids=["tls", "proxy-v1", "proxy-v2"],
)
def test_tls_or_a_proxy_header_on_the_http_port_is_refused_with_400_naming_it(
    http_port: int, first_bytes: bytes, named: bytes
) -> None:
    answer = _all_until_close(http_port, first_bytes + b"GET / HTTP/1.1\r\nHost: kiln\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert named in answer.partition(b"\r\n\r\n")[2]
