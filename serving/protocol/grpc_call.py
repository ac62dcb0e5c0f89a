"""A unary gRPC call as Kiln's HTTP/2 server (:mod:`serving.protocol.grpc_h2`) holds it, and the
servicer's view of it.

:class:`Call` is one call's request as it arrives and its answer as it leaves, and also the context
the servicer gets: ``abort``, ``time_remaining`` and ``set_trailing_metadata``, the part of grpc.aio's
``ServicerContext`` the KServe servicer uses. :func:`trailers_block` encodes how a call ends and
:func:`decompress` reads a compressed request, each with the statuses grpcio would answer.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from serving.protocol import h2_wire as w

Handler = Callable[[Any, "Call"], Awaitable[Any]]

RESPONSE_HEADERS = b"\x88" + w.literal_indexed_name(31, b"application/grpc")  # :status 200, content-type
_OK_TRAILERS = w.literal(b"grpc-status", b"0")
# What a compressed message may inflate to on the event loop (1-8 ms a MiB here, by how well it
# compressed); a larger one (64 MiB, KILN_MAX_BODY_BYTES' default: 0.2-0.55 s) inflates in a thread,
# where zlib lets go of the GIL, so the worker's other calls are answered meanwhile.
LOOP_INFLATE_BYTES = 1 << 20


class Aborted(Exception):
    """Raised by :meth:`Call.abort`: the call ends with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class Call:
    """One unary call: its request as it arrives, its answer as it leaves, and the servicer's context."""

    __slots__ = (
        "stream",
        "handler",
        "request_class",
        "encoding",
        "deadline",
        "last_read",
        "parts",
        "size",
        "held",
        "ended",
        "unacked",
        "send_window",
        "pending",
        "trailers",
        "trailing",
        "task",
        "timer",
        "loop",
    )

    def __init__(
        self, stream: int, handler: Handler, request_class: Any, send_window: int, loop: Any
    ) -> None:
        self.stream, self.handler, self.request_class = stream, handler, request_class
        self.encoding: bytes | None = None
        self.deadline: float | None = None
        self.last_read = 0.0  # when its latest DATA arrived, while its request is arriving
        self.parts: list[bytes] = []
        self.size = self.unacked = 0
        self.held = 0  # its request bytes counted in the server's BodyBudget
        self.ended = False  # the client sent END_STREAM
        self.send_window = send_window
        self.pending: memoryview | None = None  # message bytes waiting for flow-control window
        self.trailers = b""
        self.trailing: tuple[tuple[str, str], ...] = ()
        self.task: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = None  # its deadline, from dispatch to its end (h2_calls)
        self.loop = loop

    # --- the part of grpc.aio.ServicerContext the servicer uses ---
    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Aborted(code, details)

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(self.deadline - self.loop.time(), 0.0)

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing = tuple(metadata)


def trailers_block(code: int, details: str, trailing: tuple[tuple[str, str], ...]) -> bytes:
    """The HPACK block of a call's trailers: its status, message and the servicer's metadata."""
    if code == 0 and not trailing:
        return _OK_TRAILERS
    parts = [w.literal(b"grpc-status", str(code).encode())]
    if details:
        parts.append(w.literal(b"grpc-message", w.percent_encode(details[:4096])))
    parts.extend(w.literal(key.lower().encode(), str(value).encode()) for key, value in trailing)
    return b"".join(parts)


def decompress(encoding: bytes | None, message: bytes, max_bytes: int) -> bytes:
    """A compressed request message, inflated (gzip or deflate, what grpc-encoding names), at most
    ``max_bytes``. As gRPC's compression.md says: the flag set without an encoding (or with
    ``identity``) is INTERNAL, an encoding this server does not read UNIMPLEMENTED."""
    plain = _inflate(encoding, message, max_bytes + 1)
    if len(plain) > max_bytes:
        raise Aborted(grpc.StatusCode.RESOURCE_EXHAUSTED, "decompressed message larger than max")
    return plain


def decompress_small(encoding: bytes | None, message: bytes, limit: int = LOOP_INFLATE_BYTES) -> bytes | None:
    """:func:`decompress` for a message that inflates to at most ``limit`` bytes; None for a larger one
    (only its first ``limit + 1`` bytes inflated), which the server then inflates in a thread."""
    plain = _inflate(encoding, message, limit + 1)
    return plain if len(plain) <= limit else None


def _inflate(encoding: bytes | None, message: bytes, at_most: int) -> bytes:
    """Up to ``at_most`` bytes of ``message`` inflated as ``encoding`` says (the statuses: :func:`decompress`)."""
    if encoding in (None, b"identity"):
        raise Aborted(
            grpc.StatusCode.INTERNAL, "compressed-flag set but no grpc-encoding names a compression"
        )
    window = {b"gzip": 31, b"deflate": 15}.get(encoding)
    if window is None:
        name = encoding.decode(errors="replace")
        raise Aborted(
            grpc.StatusCode.UNIMPLEMENTED,
            f"compressed with {name}, which this server does not read (it reads gzip and deflate)",
        )
    try:
        return zlib.decompressobj(window).decompress(message, at_most)
    except zlib.error as error:
        raise Aborted(grpc.StatusCode.INTERNAL, f"cannot decompress the request: {error}") from None
