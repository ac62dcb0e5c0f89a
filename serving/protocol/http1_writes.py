"""The transport of the gateway's HTTP/1.1 protocol (:mod:`serving.protocol.http1`): each response
written to the socket once.

uvicorn writes a response's status line and headers, then its body, as two ``transport.write`` calls;
uvloop sends each at once, and with ``TCP_NODELAY`` (its default) each is its own TCP segment: two
``send`` system calls for the gateway and two wake-ups for a client reading the headers, then the
body. On the event loop of a translation gateway those two writes were a third of its samples
(py-spy, the decode side answering at once). Here the writes one event-loop step makes are held and
go out joined at the end of that step, so a response sent whole (headers and body in one step, as
every JSON answer is) costs one send; a streamed body still goes out as it is written, a step later.
A piece of ``JOIN_BYTES`` or more is written as it is, beside the joined rest: joining copies it, on
the event loop (a KServe v2 answer of 243 MB of JSON: 0.2-0.3 s of every other request's time), where
uvloop holds a written ``bytes`` uncopied until it is sent.
Apart from the protocol, which needs httptools: this needs nothing but asyncio.
"""

from __future__ import annotations

import asyncio
from typing import Any

JOIN_BYTES = 1 << 20  # pieces under it are joined (a copy of well under a millisecond)


class CoalescedWrites:
    """A transport whose ``write`` calls within one event-loop step reach the socket as one write, in
    order, at the end of that step (``close`` and ``write_eof`` write what is held first, and a write
    after ``write_eof`` is dropped, as after ``close``: an answer begun before a lingering close, which
    raised "Cannot call write() after write_eof()" from the loop); everything else is the wrapped
    transport's."""

    __slots__ = ("_transport", "_loop", "_held", "_ended")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None
        self._ended = False  # write_eof called: nothing more can be sent

    def write(self, data: bytes) -> None:
        if self._held is None:
            self._held = [data]
            self._loop.call_soon(self.flush)
        else:
            self._held.append(data)

    def flush(self) -> None:
        """Write what is held now (nothing once the connection is closing or its end is written)."""
        held, self._held = self._held, None
        if not held or self._ended or self._transport.is_closing():
            return
        if len(held) == 1:
            self._transport.write(held[0])
        elif max(map(len, held)) < JOIN_BYTES:
            self._transport.write(b"".join(held))
        else:
            for part in joined_runs(held):
                self._transport.write(part)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        if not self._ended:
            self._ended = True
            self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def joined_runs(parts: list[bytes]) -> list[bytes]:
    """``parts`` in order, each run of pieces under ``JOIN_BYTES`` joined into one and each larger
    piece kept as it is (not copied)."""
    out: list[bytes] = []
    small: list[bytes] = []
    for part in parts:
        if len(part) < JOIN_BYTES:
            small.append(part)
            continue
        if small:
            out.append(b"".join(small))
            small = []
        out.append(part)
    if small:
        out.append(b"".join(small))
    return out
