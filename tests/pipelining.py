"""Client-side helpers of the HTTP/1 pipelining and drain tests: flood a socket until the kernel holds
no more, read up to an answer's end, and a server protocol that says when its connection ended."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

STALL_S = 0.2  # no byte accepted for this long: the peer's and our buffers are full


def send_until_full(sock: socket.socket, data: bytes) -> int:
    """Send ``data`` without blocking until it is all sent or the kernel takes none for ``STALL_S`` (the
    server stopped reading); returns the bytes sent. Leaves ``sock`` non-blocking."""
    stream = memoryview(data)
    sock.setblocking(False)
    sent, moved = 0, time.monotonic()
    while sent < len(stream) and time.monotonic() - moved < STALL_S:
        try:
            sent += sock.send(stream[sent : sent + 65536])
            moved = time.monotonic()
        except BlockingIOError:  # its buffers and ours are full
            time.sleep(0.005)
    return sent


def recv_until(sock: socket.socket, suffix: bytes) -> bytes:
    """Everything read from ``sock`` until what was read ends with ``suffix`` (an end of stream first
    fails the test)."""
    data = b""
    while not data.endswith(suffix):
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return data


def ending(protocol: type, ended: threading.Event) -> Any:
    """``protocol`` (the gateway's HTTP/1 protocol class) setting ``ended`` when a connection starts its
    lingering close or is lost."""

    class Ending(protocol):  # type: ignore[misc, valid-type]
        def _linger(self, *args: Any) -> None:
            super()._linger(*args)
            ended.set()

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            ended.set()

    return Ending
