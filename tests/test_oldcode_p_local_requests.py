"""The demo's (and bench's) requests to the servers they start on this machine go to those servers, not to
a proxy the environment names for pip: httpx and gRPC, unlike curl, send 127.0.0.1 to http_proxy unless
NO_PROXY names it, so the readiness probe waited out its timeout and the demo said its gateway did not start."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kiln import demo
from kiln.processes import running
from serving.triton.ports import held_port

PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")

# An HTTP server on the port given, bound beside the test's socket (SO_REUSEPORT), answering 200.
SERVER = """
import http.server, socket, sys
class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()
Server(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


@pytest.fixture
def dead_proxy(monkeypatch) -> Iterator[None]:
    """http_proxy and its kin name a port bound here but never listening: a proxy that refuses all."""
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with held_port() as sock:
        for name in PROXY_VARIABLES:
            monkeypatch.setenv(name, f"http://127.0.0.1:{sock.getsockname()[1]}")
        yield


def test_a_server_is_ready_when_it_answers_whatever_proxy_the_environment_names(dead_proxy, tmp_path):
    with held_port(reuse_port=True) as sock:
        port = sock.getsockname()[1]
        cmd = [sys.executable, "-c", SERVER, str(port)]
        # a failure bound only: the server answers within a second or two
        with running(cmd, f"http://127.0.0.1:{port}/", timeout_s=60, log_path=tmp_path / "log") as proc:
            assert proc.poll() is None


class Config(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps({"instance_group": [{"kind": "KIND_CPU"}], "parameters": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_demo_asks_its_own_gateway_past_a_proxy(dead_proxy):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Config)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with demo.console.capture() as captured:
            demo.show_placement(f"http://127.0.0.1:{server.server_address[1]}", "resnet18")
    finally:
        server.shutdown()
        server.server_close()
    assert "resnet18: instance kind KIND_CPU" in captured.get()


def test_the_demos_grpc_requests_go_to_its_gateway_past_a_proxy(dead_proxy):
    import grpc
    from tritonclient.grpc import service_pb2

    def live(request: bytes, context: object) -> bytes:
        return service_pb2.ServerLiveResponse(live=True).SerializeToString()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ServerLive": grpc.unary_unary_rpc_method_handler(live)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = demo.grpc_client(f"127.0.0.1:{port}")
        try:
            assert client.is_server_live(client_timeout=30)
        finally:
            client.close()
    finally:
        server.stop(None)


def test_the_proxy_really_refuses(dead_proxy):
    """The fixture's proxy is one a request sent through it fails on (else the tests above prove nothing)."""
    import httpx

    with pytest.raises(httpx.TransportError):
        httpx.get("http://127.0.0.1:1/", timeout=5)


def test_the_demos_grpc_channel_keeps_tritonclients_message_limits() -> None:
    """Channel arguments given to tritonclient replace its own, which lift gRPC's 4 MB receive limit."""
    from tritonclient.grpc._client import MAX_GRPC_MESSAGE_SIZE

    from kiln.processes import LOCAL_GRPC

    limits = dict(LOCAL_GRPC)
    assert limits["grpc.max_receive_message_length"] == MAX_GRPC_MESSAGE_SIZE
    assert limits["grpc.max_send_message_length"] == MAX_GRPC_MESSAGE_SIZE
