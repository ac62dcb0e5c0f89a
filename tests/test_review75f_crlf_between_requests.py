"""The CRLFs a client may send between requests (RFC 9112 2.2: a server ignores at least one empty
line before a request line; older clients write one after a POST body) leave a keep-alive connection
idle, as it was before them: its keep-alive timer still closes it, and a drain closes it.

The parser reads them without beginning a request, while the read had cancelled the keep-alive timer,
so no timer was left on the connection: a client that sent ``\\r\\n`` held its socket for as long as it
liked, and where the CRLF crossed the stop signal (unread when the drain began, which leaves such a
connection open for the request it seemed to begin), the drain waited on it until the grace ran out.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from tests.repo_fixtures import LiveServer
from tests.test_drain_c_keep_alive_crossing import (
    GET,
    answer,
    arrived_unread,
    drain_begins,
    hello,
    one_answer,
)


@pytest.fixture
def server() -> Iterator[LiveServer]:
    with LiveServer(hello) as live:  # keep-alive of 300 s: a close seen is the drain's, not the timer's
        yield live


@pytest.fixture
def brief_keep_alive() -> Iterator[LiveServer]:
    with LiveServer(hello, keep_alive_s=1) as live:  # keep-alive of 1 s: the timer's close is awaited
        yield live


def closed_by_server(protocol: object) -> threading.Event:
    """An event set once the server's side of ``protocol``'s connection is lost (closed)."""
    lost = threading.Event()
    connection_lost = protocol.connection_lost  # type: ignore[attr-defined]

    def noting(exc: Exception | None) -> None:
        connection_lost(exc)
        lost.set()

    protocol.connection_lost = noting  # type: ignore[attr-defined]
    return lost


def test_a_keep_alive_connection_that_sent_a_crlf_is_still_closed_by_its_keep_alive_timer(
    brief_keep_alive: LiveServer,
) -> None:
    with socket.create_connection(("127.0.0.1", brief_keep_alive.port)) as client:
        one_answer(client, GET)
        (protocol,) = brief_keep_alive.server.server_state.connections
        lost = closed_by_server(protocol)
        client.sendall(b"\r\n")
        assert lost.wait(10), "a 1 s keep-alive never closed the connection after its client's CRLF"
        assert answer(client) == b""


def test_a_crlf_unread_when_the_drain_begins_does_not_keep_the_connection_open(server: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        one_answer(client, GET)
        (protocol,) = server.server.server_state.connections
        lost = closed_by_server(protocol)
        drain_begins(protocol, arrived_unread(protocol, b"\r\n", client))
        assert lost.wait(10), "the drain left an idle connection open, for as long as its client liked"
        assert answer(client) == b""


def test_a_request_after_a_crlf_that_crossed_the_drain_is_still_answered_and_closed(
    server: LiveServer,
) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        one_answer(client, GET)
        (protocol,) = server.server.server_state.connections
        drain_begins(protocol, arrived_unread(protocol, b"\r\n" + GET, client))
        last = answer(client)
    assert last.startswith(b"HTTP/1.1 200") and b"connection: close" in last.lower(), last


def test_a_crlf_between_keep_alive_requests_changes_nothing_for_the_next_request(server: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        one_answer(client, GET)
        client.sendall(b"\r\n")
        second = one_answer(client, GET)
    assert second.startswith(b"HTTP/1.1 200") and b"connection: close" not in second.lower()
