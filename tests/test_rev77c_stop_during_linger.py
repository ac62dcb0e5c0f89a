"""A stop (SIGTERM) while a connection closes in stages: its last answer (``Connection: close`` behind
a pipeline) written, our FIN sent, the client's later bytes read and dropped until its FIN. uvicorn's
drain closed such a connection at once (its answer complete: nothing in flight, it seemed), so the
client's next bytes were answered with a reset that discarded the answers still in the gateway's
socket: the reset the linger is there to prevent (5 of 101 answers, then ``ECONNRESET``). It is left to
end itself now, within LINGER_S."""

from __future__ import annotations

import re
import socket
import threading

import pytest

from serving.protocol.http1 import http_protocol
from tests.pipelining import ending, send_until_full
from tests.repo_fixtures import LiveServer
from tests.test_hi2_pipelined_close import CLOSE, GET, app


def test_a_stop_during_a_lingering_close_keeps_the_answers() -> None:
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn serves with h11")
    ended, stopping = threading.Event(), threading.Event()

    class Stopped(ending(protocol, ended)):  # type: ignore[misc]
        def shutdown(self) -> None:
            super().shutdown()
            stopping.set()

    with LiveServer(app(), http=Stopped, log_level="critical") as live:
        # room for every answer in the gateway's send buffer, none in the client's: a reset discards them
        live.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        with socket.create_connection(("127.0.0.1", live.port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(GET * 100 + CLOSE)
            assert ended.wait(10)  # answered, and lingering (failure bounds, never waited out)
            live.server.should_exit = True  # the stop begins: the drain reaches this connection
            assert stopping.wait(10)
            send_until_full(sock, GET * 5_000)  # the client's later requests arrive now
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # now read the answers
            sock.setblocking(True)
            sock.settimeout(10)
            answers = b""
            while chunk := sock.recv(1 << 16):
                answers += chunk
    statuses = re.findall(rb"HTTP/1.1 (\d+)", answers)
    assert statuses == [b"200"] * 101, (len(statuses), answers[-300:])
