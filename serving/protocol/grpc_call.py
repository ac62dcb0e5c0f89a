"""A unary gRPC call as Kiln's HTTP/2 server (:mod:`serving.protocol.grpc_h2`) holds it, and the
servicer's view of it.

:class:`Call` is one call's request as it arrives and its answer as it leaves, and also the context
the servicer gets: ``abort``, ``time_remaining`` and ``set_trailing_metadata``, the part of grpc.aio's
``ServicerContext`` the KServe servicer uses. Its request message is checked as it arrives (the
length its prefix declares against the limit, the bytes against that length) and a large one written
into one buffer, parsed without a join. :func:`trailers_block` encodes how a call ends and
:func:`decompress` reads a compressed request, each with the statuses grpcio would answer.
"""

from __future__ import annotations

import asyncio
import io
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from serving.protocol import h2_wire as w
from serving.protocol.limits import LOOP_INFLATE_BYTES, BodyBudget, Inflated

Handler = Callable[[Any, "Call"], Awaitable[Any]]

RESPONSE_HEADERS = b"\x88" + w.literal_indexed_name(31, b"application/grpc")  # :status 200, content-type
_OK_TRAILERS = w.literal(b"grpc-status", b"0")
# A request message larger than this is written into one buffer as its DATA arrives, a frame at a
# time, and parsed from it: gathered as frames and joined at dispatch, 64 MiB of 16 KiB frames held
# the event loop 28-166 ms for the join alone (its fresh pages faulted in at once).
LOOP_JOIN_BYTES = 1 << 20
# DATA payloads shorter than this after a message's first are appended to one buffer, not kept as an
# object each: a message sent in 2-byte DATA frames held ~22 times its bytes (a bytes object and a list
# slot a frame) while the body budget counted them once, so a 1 GiB budget let clients hold ~22 GiB
SMALL_PART_BYTES = 1024
NO_MESSAGE = "the call carried no request message"
ONE_MESSAGE = "a unary call must carry exactly one request message"
_RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
_INTERNAL = grpc.StatusCode.INTERNAL.value[0]
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
_WINDOWS = {b"gzip": 31, b"deflate": 15}  # the zlib window of each grpc-encoding this server reads
# grpc core's words, as grpcio's server (and Triton's) sends them: clients and users switching servers
# match them
TOO_LARGE_INFLATED = "Decompressed message larger than max"
HEAD_BYTES = 4096  # what of a message refused unparsed its servicer is shown (Call.refused)


def too_large(declared: int, max_bytes: int) -> str:
    """The details of a message declaring ``declared`` bytes past ``max_bytes``, in grpc core's words."""
    return f"SERVER: Received message larger than max ({declared} vs. {max_bytes})"


class Aborted(Exception):
    """Raised by :meth:`Call.abort`: the call ends with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class Pieces:
    """A response message a servicer hands over already serialized, in pieces (bytes, or flat byte
    views of the arrays they carry): Kiln's server writes ``pieces()`` in place of the one
    ``SerializeToString()`` of a protobuf message, its large pieces uncopied (the arrays must not
    change once handed over: the backends' outputs are the answer's own)."""

    __slots__ = ()

    def pieces(self) -> list[bytes | memoryview]:
        raise NotImplementedError


class Outgoing:
    """A call's answer bytes waiting for flow-control window: pieces in order, taken a DATA frame at a
    time as views of them, never joined or copied here (``Connection._flush`` joins the small ones)."""

    __slots__ = ("parts", "size")

    def __init__(self, pieces: Iterable[bytes | memoryview]) -> None:
        self.parts: deque[bytes | memoryview] = deque()
        self.size = 0
        self.extend(pieces)

    def extend(self, pieces: Iterable[bytes | memoryview]) -> None:
        """More bytes behind those waiting (a stream's next answers)."""
        for piece in pieces:
            if len(piece):
                self.parts.append(piece)
                self.size += len(piece)

    def take(self, size: int) -> list[bytes | memoryview]:
        """The next ``size`` bytes (at most what waits), as the pieces or views of them that hold them."""
        out, parts = [], self.parts
        size = min(size, self.size)
        self.size -= size
        while size > 0:
            piece = parts[0]
            if len(piece) <= size:
                out.append(parts.popleft())
                size -= len(piece)
            else:
                view = memoryview(piece)
                out.append(view[:size])
                parts[0] = view[size:]
                size = 0
        return out

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0


class Call:
    """One unary call: its request as it arrives, its answer as it leaves, and the servicer's context."""

    __slots__ = (
        "stream",
        "handler",
        "request_class",
        "encoding",
        "deadline",
        "halfway",
        "last_read",
        "parts",
        "body",
        "declared",
        "compressed",
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
        "released",
        "parked_at",
        "request",
    )

    streaming = False  # a unary call; serving.protocol.h2_streams.StreamCall is the streaming kind

    def __init__(
        self, stream: int, handler: Handler, request_class: Any, send_window: int, loop: Any
    ) -> None:
        self.stream, self.handler, self.request_class = stream, handler, request_class
        self.encoding: bytes | None = None
        self.deadline: float | None = None
        self.halfway: float | None = None  # half its timeout on: a reset after it is its deadline's
        self.last_read = 0.0  # when its latest DATA arrived, while its request is arriving
        self.parts: list[bytes | bytearray] = []  # the request's DATA as it arrived (a small message)
        self.body: io.BytesIO | None = None  # a large message, written in place (LOOP_JOIN_BYTES)
        self.declared: int | None = None  # the message's length, once its 5-byte prefix has arrived
        self.compressed = False  # its prefix's compressed flag
        self.size = self.unacked = 0  # request bytes received, prefix included
        self.held = 0  # its request bytes counted in the server's BodyBudget
        self.ended = False  # the client sent END_STREAM
        self.send_window = send_window
        self.pending: Outgoing | None = None  # message bytes waiting for flow-control window
        self.trailers = b""
        self.trailing: tuple[tuple[str, str], ...] = ()
        self.task: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = None  # its deadline, from dispatch to its end (h2_calls)
        self.loop = loop
        self.released = False  # ended, its bytes given back: a request still being read holds no more
        self.parked_at = 0.0  # when its answer last began to wait for its own window (h2_calls' _park)
        self.request: Any = None  # its parsed request until its servicer starts on it (h2_calls)

    # --- its request message, as it arrives ---
    def gather(self, payload: bytes, max_bytes: int, budget: BodyBudget | None) -> tuple[int, str] | None:
        """Take a DATA payload of the request; the status and details to end the call with where it
        cannot be one message of at most ``max_bytes`` (grpc core's answers), as soon as the bytes tell
        (a length above the limit at the prefix, bytes past it as they arrive), or past the budget."""
        size = self.size + len(payload)
        if self.declared is None and size >= 5:
            head = (b"".join(self.parts) + payload[:5])[:5]  # the parts so far: under 5 bytes
            self.compressed, self.declared = head[0] != 0, int.from_bytes(head[1:5], "big")
            if self.declared > max_bytes:
                return self.refused(payload, _RESOURCE_EXHAUSTED, too_large(self.declared, max_bytes))
        if self.declared is not None and size > self.declared + 5:
            return _INTERNAL, ONE_MESSAGE
        large = self.body is None and self.declared is not None and self.declared > LOOP_JOIN_BYTES
        # a large message's buffer is held whole from its prefix on, as HTTP holds a Content-Length
        if budget is not None and not self.hold(self.declared + 5 if large else size, budget):
            return self.refused(payload, _UNAVAILABLE, budget.refusal().message)
        if self.body is not None:
            self.body.write(payload)
        elif large:
            self._buffer(payload)
        elif self.parts and len(payload) < SMALL_PART_BYTES:
            self._append_small(payload)
        else:
            self.parts.append(payload)
        self.size = size
        return None

    def _append_small(self, payload: bytes) -> None:
        """A short DATA payload added to the buffer the short parts before it went to: its bytes, not
        an object a frame, are what the call holds (a full-size part is never copied for it)."""
        last = self.parts[-1]
        if isinstance(last, bytearray):
            last += payload
        elif len(last) < SMALL_PART_BYTES:
            self.parts[-1] = bytearray(last) + payload
        else:
            self.parts.append(bytearray(payload))

    def refused(
        self, payload: bytes, code: int, details: str, message: bytes | None = None
    ) -> tuple[int, str]:
        """A refusal of the message before it is parsed (:meth:`gather`'s, ``payload`` the DATA that
        arrived last, not gathered; or, with ``message``, the whole message's as sent, refused for what
        it inflates to), told first to the servicer the handler is a method of, where it has
        ``refused_unparsed(request_class, head, code, details)`` (the KServe servicer: a ModelInfer call
        counted for its model, as HTTP counts a body refused unread). Looked up only here: a call
        served pays nothing for it."""
        tell = getattr(getattr(self.handler, "__self__", None), "refused_unparsed", None)
        if tell is not None:
            head = self._head(payload) if message is None else self._readable(message[:HEAD_BYTES])
            tell(self.request_class, head, code, details)
        return code, details

    def unserved(self, left_s: float | None) -> None:
        """Its parsed request's servicer never started (the call ended first: its client's reset, its
        deadline, its connection lost; ``left_s``: the time its deadline left, if any): told to the
        servicer, where it has ``unserved(request, left_s)`` (the KServe servicer counts a ModelInfer
        call as a cancelled request), as :meth:`refused` tells it."""
        request, self.request = self.request, None
        tell = getattr(getattr(self.handler, "__self__", None), "unserved", None)
        if tell is not None and request is not None:
            tell(request, left_s)

    def _head(self, payload: bytes) -> bytes:
        """The first bytes of the message as they arrived (``payload`` the latest), at most
        ``HEAD_BYTES`` of it, inflated where it is compressed (none where they do not inflate). A large
        message is refused at its prefix if at all while it arrives (its buffer is held whole from
        there on), unless its deadline or the read timeout ends it: then its first bytes are read from
        that buffer (a refusal for what it inflates to shows its ``message``)."""
        if self.body is not None:  # a large message's own buffer (a deadline ended it as it arrived)
            with self.body.getbuffer() as buffer:
                return self._readable(bytes(buffer[:HEAD_BYTES]))  # its prefix left out
        wanted, pieces, have = HEAD_BYTES + 5, [], 0
        for part in (*self.parts, payload):
            pieces.append(part[: wanted - have])
            have += len(pieces[-1])
            if have >= wanted:
                break
        return self._readable(b"".join(pieces)[5:])

    def _readable(self, head: bytes) -> bytes:
        """``head``, the start of the message as sent, inflated where it is compressed (at most
        ``HEAD_BYTES`` of output; none where it does not inflate)."""
        if not self.compressed:
            return head
        window = _WINDOWS.get(self.encoding or b"")
        try:  # the start of a stream inflates alone
            return b"" if window is None else zlib.decompressobj(window).decompress(head, HEAD_BYTES)
        except zlib.error:
            return b""

    def hold(self, size: int, budget: BodyBudget) -> bool:
        """Hold ``size`` bytes of the body budget for this call in all (what it holds counted in);
        False, and nothing more held, where they do not fit. Given back when the call ends."""
        if size <= self.held:
            return True
        if not budget.take(size - self.held):
            return False
        self.held = size
        return True

    def trim(self, size: int, budget: BodyBudget) -> None:
        """Hold no more than ``size`` bytes (what an inflation held ahead of its output, given back)."""
        if self.held > size:
            budget.give(self.held - size)
            self.held = size

    def backlogged(self) -> bool:
        """Whether its client is granted no more window for now (a stream's messages wait: h2_streams)."""
        return False

    def holds_message(self) -> bool:
        """Whether the budget holds this call's whole message already (a large one's, from its prefix on)."""
        return self.declared is not None and self.held >= self.declared + 5

    def _buffer(self, payload: bytes) -> None:
        """Move to one buffer of the declared length, the prefix left out, written in place from now on.

        A BytesIO holding the only reference to the bytes it was given writes into them, and its
        ``getvalue()`` returns them uncopied once whole; ``bytes(n)`` is calloc'd, so its pages fault in
        as the DATA arrives. (``FromString`` also reads a bytearray uncopied, but ``bytearray(n)`` zeroes
        its 64 MiB at once, 24-32 ms here; a memoryview it copies first, ~200 ms.)"""
        body = io.BytesIO(bytes(self.declared))
        at = 0
        for part in (*self.parts, payload):
            if at + len(part) > 5:
                body.write(memoryview(part)[max(5 - at, 0) :])
            at += len(part)
        self.parts, self.body = [], body

    def unfinished(self) -> str | None:
        """Why the request that arrived whole is not one message (None where it is)."""
        if self.size < 5:
            return NO_MESSAGE
        return None if self.size == self.declared + 5 else ONE_MESSAGE

    def message(self) -> bytes:
        """The request message, its prefix left out, handed over (the call keeps no reference to it)."""
        if self.body is not None:
            body, self.body = self.body, None
            return body.getvalue()  # the buffer itself: it is whole and was never shared
        parts = self.parts
        data = parts[0] if len(parts) == 1 and type(parts[0]) is bytes else b"".join(parts)
        self.parts = []
        return data[5:]

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
        parts.append(w.literal(b"grpc-message", w.percent_encode(w.bounded_message(details))))
    parts.extend(w.literal(key.lower().encode(), str(value).encode()) for key, value in trailing)
    return b"".join(parts)


def decompress(
    encoding: bytes | None, message: bytes, max_bytes: int, grow: Callable[[int], bool] | None = None
) -> bytes:
    """A compressed request message, inflated (gzip or deflate, what grpc-encoding names), at most
    ``max_bytes``. As gRPC's compression.md says: the flag set without an encoding (or with
    ``identity``) is INTERNAL, an encoding this server does not read UNIMPLEMENTED. ``grow``: the
    body budget asked as the output grows (``limits.Inflated``; ``limits.NoBudget`` where it says no)."""
    plain = _inflate(encoding, message, max_bytes + 1, grow)
    if len(plain) > max_bytes:
        raise Aborted(grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_LARGE_INFLATED)
    return plain


def decompress_small(encoding: bytes | None, message: bytes, limit: int = LOOP_INFLATE_BYTES) -> bytes | None:
    """:func:`decompress` for a message that inflates to at most ``limit`` bytes; None for a larger one
    (only its first ``limit + 1`` bytes inflated), which the server then inflates in a thread."""
    plain = _inflate(encoding, message, limit + 1)
    return plain if len(plain) <= limit else None


def _inflate(
    encoding: bytes | None, message: bytes, at_most: int, grow: Callable[[int], bool] | None = None
) -> bytes:
    """Up to ``at_most`` bytes of ``message`` inflated as ``encoding`` says (the statuses: :func:`decompress`)."""
    if encoding in (None, b"identity"):
        raise Aborted(
            grpc.StatusCode.INTERNAL, "compressed-flag set but no grpc-encoding names a compression"
        )
    window = _WINDOWS.get(encoding)
    if window is None:
        name = encoding.decode(errors="replace")
        raise Aborted(
            grpc.StatusCode.UNIMPLEMENTED,
            f"compressed with {name}, which this server does not read (it reads gzip and deflate)",
        )
    out = Inflated(
        at_most - 1, grow
    )  # a step at a time, as HTTP's bodies: one call held the GIL ~30 ms at 64 MiB
    decoder = zlib.decompressobj(window)
    try:
        end = out.stream(decoder, memoryview(message), 0)  # past the limit (None): at_most bytes kept
    except zlib.error as error:
        raise Aborted(grpc.StatusCode.INTERNAL, f"cannot decompress the request: {error}") from None
    # zlib hands back a cut stream's prefix without a word (a gzip one's CRC never checked), and stops
    # at its end whatever follows: grpc core refuses both, as HTTP's bodies are refused (limits.inflate)
    if end is not None and not decoder.eof:
        raise Aborted(grpc.StatusCode.INTERNAL, "cannot decompress the request: the stream is cut short")
    if end is not None and end != len(message):
        raise Aborted(
            grpc.StatusCode.INTERNAL, "cannot decompress the request: bytes follow the end of its stream"
        )
    return out.value()
