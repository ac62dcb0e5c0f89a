"""The lines Kiln's gRPC server writes about one client's connection name that client, as the HTTP
side's "refused a request from HOST:PORT" does: "closing a gRPC connection: HEADERS on stream 2" left
an operator no way to find which client sent broken HTTP/2 or stalled its frames."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from serving.protocol import h2_wire as w
from serving.protocol.grpc_server import GrpcHandle, start_grpc_server
from serving.protocol.send_watch import client_address
from tests.h2_client import RawClient
from tests.test_grpc import FakeBackend, LoopThread


@pytest.fixture
def server(loop: LoopThread) -> Iterator[GrpcHandle]:
    handle = loop.run(start_grpc_server(FakeBackend(), "127.0.0.1", 0, read_timeout_s=0.2))
    yield handle
    loop.run(handle.stop(1.0))


def _closed_by_server(client: RawClient) -> None:
    while client.frame() is not None:  # the server's frames, then its close
        pass


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "closing a gRPC connection" in r.getMessage()]


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        (w.frame(w.HEADERS, w.END_HEADERS, 2, b"\x83"), "HEADERS on stream 2"),  # a protocol error
        (w.frame(w.PING, 0, 0, b"kiln-ok!")[:5], "not received whole within 0.2 s"),  # a stalled frame
    ],
    ids=["protocol-error", "read-timeout"],
)
def test_a_grpc_connection_closed_for_its_client_s_fault_names_the_client(
    server: GrpcHandle, caplog: pytest.LogCaptureFixture, frame: bytes, says: str
) -> None:
    client = RawClient(server.port)
    host, port = client.sock.getsockname()[:2]
    try:
        with caplog.at_level(logging.INFO, logger="serving.protocol"):
            client.send(w.PREFACE, w.settings_frame({}), frame)
            _closed_by_server(client)
    finally:
        client.close()
    lines = _lines(caplog)
    assert len(lines) == 1 and says in lines[0], lines
    assert f"from {host}:{port}:" in lines[0], lines


def test_an_ipv6_client_is_written_in_brackets_and_a_transport_without_a_peer_as_a_client() -> None:
    def transport(peer: object) -> SimpleNamespace:
        return SimpleNamespace(
            get_extra_info=lambda name, default=None: peer if name == "peername" else default
        )

    assert client_address(transport(("::1", 50051, 0, 0))) == "[::1]:50051"
    assert client_address(transport(("10.0.0.7", 41000))) == "10.0.0.7:41000"
    assert client_address(transport(None)) == "a client"
