"""A pipelining client whose next bytes reach the gateway only after it answered the request that ends
the connection (``Connection: close``, HTTP/1.0): nothing of the client's was unread at that moment, so
the gateway closed at once, and the bytes that came after were answered with a reset that discarded
the answers still in its socket (``ConnectionResetError``: the fresh-clone suite's
``test_every_answer_up_to_a_pipelined_connection_close_arrives`` on a busy machine). It now lingers a
short while (``QUIET_LINGER_S``) where the client pipelined, LINGER_S once its bytes keep coming."""

from __future__ import annotations

import re
import socket
import threading

import pytest

from serving.protocol.http1 import http_protocol
from tests.pipelining import ending, send_until_full
from tests.repo_fixtures import LiveServer
from tests.test_hi2_pipelined_close import CLOSE, GET, HTTP10, app


@pytest.mark.parametrize("last", [CLOSE, HTTP10], ids=["connection-close", "http-1.0"])
def test_bytes_sent_after_the_gateway_decided_to_close_do_not_reset_the_answers(last: bytes) -> None:
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn serves with h11")
    ended = threading.Event()
    with LiveServer(app(), http=ending(protocol, ended), log_level="critical") as live:
        live.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        with socket.create_connection(("127.0.0.1", live.port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(GET * 100 + last)  # nothing behind it yet
            assert ended.wait(10)  # the gateway has answered the last request and ends the connection
            send_until_full(sock, GET * 5_000)  # the client's later requests arrive now
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.setblocking(True)
            sock.settimeout(10)
            answers = b""
            while chunk := sock.recv(1 << 16):
                answers += chunk
    assert re.findall(rb"HTTP/1.[01] (\d+)", answers) == [b"200"] * 101, answers[-300:]
