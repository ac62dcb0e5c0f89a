"""The gateway's default ports, as the suite holds them (:func:`tests.conftest.hold_ports`): no server
of a test can bind them, on any address (an IPv6 one too: a gateway on ``::1`` and the default gRPC port
passed while the port was free, the flake the hold is there to end), and a client connecting to them
is refused at once, as where nothing serves them. Held by a listening socket, such a connection was
accepted and never answered: a client left on a default URL hung until its own timeout."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.conftest import hold_ports
from tests.test_ipv6_hosts import needs_ipv6


@pytest.fixture
def held() -> Iterator[int]:
    """A port free on every address, held as the suite holds the default ports."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("0.0.0.0", 0))
        port = probe.getsockname()[1]
    sockets = hold_ports((port,))
    assert sockets, f"port {port} was taken meanwhile"
    yield port
    for sock in sockets:
        sock.close()


def test_a_client_connecting_to_a_held_port_is_refused_at_once(held):
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", held), timeout=5).close()


@needs_ipv6
def test_no_server_can_bind_a_held_port_on_an_ipv6_address_either(held):
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's servers bind
        with pytest.raises(OSError, match="in use"):
            server.bind(("::1", held))


def test_no_server_can_bind_a_held_port_on_an_ipv4_address(held):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError, match="in use"):
            server.bind(("127.0.0.1", held))
