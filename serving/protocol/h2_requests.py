"""The frames that carry a gRPC call's request into Kiln's HTTP/2 server (:mod:`grpc_h2`): HEADERS and
its CONTINUATION frames open a call (its method found, its deadline and encoding read, or an answer
at once: 405/415 for what is not gRPC, UNIMPLEMENTED for an unknown method, RESOURCE_EXHAUSTED for
headers past ``MAX_HEADER_LIST`` (that call alone: its block is decoded all the same, as the HPACK table
must follow it), REFUSED_STREAM past ``MAX_STREAMS`` or while the server stops) or end the client's
half of one with trailers; DATA feeds a call's message, granting the client more window as it is
read. Each is checked as RFC 9113 says: a stream or connection error, never a call left half open. Also
the limits the server advertises in its SETTINGS (:meth:`grpc_h2.Connection.connection_made`) and holds
clients to here.

:class:`RequestFrames` is a mixin of :class:`serving.protocol.grpc_h2.Connection`, as the control
frames (:mod:`h2_control`) are: a whole request goes to :mod:`h2_calls` (``_dispatch``), a streaming
call's messages to :mod:`h2_streams`, a half-sent one to :mod:`h2_watch`'s clock.
"""

from __future__ import annotations

import logging

import grpc

from serving.protocol import h2_wire as w
from serving.protocol.grpc_call import Call
from serving.protocol.h2_state import ConnectionState
from serving.protocol.h2_streams import StreamCall

MAX_STREAMS = 1024  # concurrent calls a connection may open (more are refused, and clients retry)
STREAM_WINDOW = 1 << 22  # bytes a call may send before we grant more
CONNECTION_WINDOW = 1 << 30
FRAME_SIZE = 1 << 20  # largest frame we accept: a 48 KB image arrives in one DATA frame, not three
MAX_HEADER_LIST = 1 << 16
# streams closed lately whose state a late frame is judged by (ClosedStreams): past MAX_STREAMS, so the
# calls a busy connection answered early (refused under load while their clients still upload) are
# remembered while their late frames can still come
CLOSED_REMEMBERED = 2048
_RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]  # a request's headers past MAX_HEADER_LIST
_SELF_DEPENDENT = 0x100  # beside a HEADERS frame's flags: its priority names its own stream

log = logging.getLogger("serving.protocol.grpc_h2")  # the server's log, whichever part writes it


def _grpc_content(content_type: bytes) -> bool:
    """``application/grpc``, alone or with a ``+codec`` or parameters, as grpc core accepts it (not
    ``application/grpc-web``, whose framing differs: its client would misread our answers)."""
    return content_type[:16] == b"application/grpc" and content_type[16:17] in (b"", b"+", b";")


class ClosedStreams:
    """The streams closed lately, each with whether the server closed it while its client may still
    have been sending (answered early, or reset: its late frames are dropped, RFC 9113 section 5.1)
    or not (the client had ended its half, or reset it: a DATA or HEADERS frame on it is the client's
    error). Two generations of at most ``size`` each: noting and looking up cost a step, and a
    connection that served a million calls remembers no more than ``2 * size``. ``floor``: the highest
    stream forgotten, whose late frames are dropped unjudged (as before this memory existed) rather
    than taken for the client's error."""

    __slots__ = ("size", "recent", "older", "floor")

    def __init__(self, size: int = CLOSED_REMEMBERED) -> None:
        self.size = size
        self.recent: dict[int, bool] = {}
        self.older: dict[int, bool] = {}
        self.floor = 0

    def note(self, stream: int, early: bool) -> None:
        recent = self.recent
        recent[stream] = early
        if len(recent) >= self.size:
            if self.older:
                self.floor = max(self.floor, max(self.older))
            self.older, self.recent = recent, {}

    def early(self, stream: int) -> bool | None:
        """Whether the server closed ``stream`` early; None where it is not remembered (never opened,
        or closed long ago: :meth:`forgotten`)."""
        early = self.recent.get(stream)
        return self.older.get(stream) if early is None else early

    def client_closed(self, stream: int) -> bool:
        """Whether a late DATA frame on ``stream`` (at most the last opened, no call now) is the client's
        error: it had closed the stream itself, or skipped its id (implicitly closed, RFC 9113 section
        5.1.1). A stream closed early, or forgotten, is not: its late frames are dropped."""
        early = self.early(stream)
        return early is False or (early is None and stream > self.floor)


class RequestFrames(ConnectionState):
    """HEADERS, CONTINUATION and DATA of a connection: calls opened, fed and ended by their client."""

    def _data(self, flags: int, stream: int, payload: bytes) -> None:
        received = len(payload)
        self.unacked += received
        if self.unacked >= CONNECTION_WINDOW // 2:
            self._write(w.window_update(0, self.unacked))
            self.unacked = 0
        if flags & w.PADDED:  # checked whatever the stream's state: a frame's own format
            payload = payload[1 : len(payload) - _padding(payload)]
        call = self.calls.get(stream)
        if call is None:
            if stream == 0 or stream > self.last_stream:
                raise w.H2Error(w.PROTOCOL_ERROR, f"DATA on stream {stream}, which is not open")
            if self.closed_streams.client_closed(stream):  # the client's own half was over (section 6.1)
                self._refuse_stream(stream, w.STREAM_CLOSED)
            return  # a call we answered or reset early: the bytes are counted above, then dropped
        if call.ended:  # DATA after the client's END_STREAM (RFC 9113 section 5.1)
            self._reset(call, w.STREAM_CLOSED)
            return
        if not received and not flags & w.END_STREAM:
            return  # an empty frame: nothing held, and no progress for the read timeout to see
        if self.content_lengths and not self._within_content_length(call, len(payload), flags):
            return
        if call.streaming:  # each message to its servicer as it completes
            refusal = call.feed(payload, self.server.max_message_bytes, self.server.budget)
        else:
            refusal = call.gather(payload, self.server.max_message_bytes, self.server.budget)
        if flags & w.END_STREAM:
            call.ended = True
        if refusal is not None:
            self._finish(call, *refusal)
        elif not call.ended:
            call.last_read = self.loop.time()
            if call.streaming:
                self._watch_message(call)
            call.unacked += received
            if call.unacked >= STREAM_WINDOW // 2 and not call.backlogged():
                self._write(w.window_update(stream, call.unacked))
                call.unacked = 0
        elif call.streaming:
            self.partial.pop(stream, None)
            call.end_requests()
        else:
            self._dispatch(call)

    def _grant_taken(self, call: StreamCall) -> None:
        """A stream's servicer took a message: the window withheld from its client while messages waited
        (:meth:`_data`) is granted once they no longer hold ``h2_streams.BACKLOG_BYTES``."""
        if call.unacked < STREAM_WINDOW // 2 or call.ended or call.backlogged():
            return
        if self.calls.get(call.stream) is call:
            self._write(w.window_update(call.stream, call.unacked))
            call.unacked = 0
            call.last_read = self.loop.time()  # the client could not send meanwhile: its clock restarts

    def _watch_message(self, call: StreamCall) -> None:
        """A stream's message begun and not yet whole pauses no longer than a unary call's request may
        (h2_watch's read timeout, or the deadline), as the bytes it holds in the body budget are held
        (held for the connection's life, a few such streams kept the budget full and every other
        request refused); pauses between messages stay the client's to take."""
        if not call.incoming:
            self.partial.pop(call.stream, None)
        elif call.stream not in self.partial:
            self.partial[call.stream] = call
            self.fresh.append(call)  # h2_watch's, after this read

    def _within_content_length(self, call: Call, size: int, flags: int) -> bool:
        """Count ``size`` bytes of DATA against the content-length ``call`` declared, if it did; False,
        and the call reset, where they pass it or the stream ends short of it (RFC 9113 section 8.1.1)."""
        due = self.content_lengths.get(call.stream)
        if due is None:
            return True
        due -= size
        if due < 0 or (due and flags & w.END_STREAM):
            self._reset(call, w.PROTOCOL_ERROR)
            return False
        self.content_lengths[call.stream] = due
        return True

    def _received(self, size: int) -> None:
        """``size`` bytes of DATA count against the connection's window whether read or dropped."""
        self.unacked += size
        if self.unacked >= CONNECTION_WINDOW // 2:
            self._write(w.window_update(0, self.unacked))
            self.unacked = 0

    def _headers(self, flags: int, stream: int, payload: bytes) -> None:
        if stream == 0 or not stream & 1:
            raise w.H2Error(w.PROTOCOL_ERROR, f"HEADERS on stream {stream}")
        start, end = 0, len(payload)
        if flags & w.PADDED:
            start, end = 1, end - _padding(payload)
        if flags & w.PRIORITY_FLAG:
            if int.from_bytes(payload[start : start + 4], "big") & 0x7FFFFFFF == stream:
                flags |= _SELF_DEPENDENT  # a stream error (section 5.3.1), once the block is decoded
            start += 5
        if start > end:
            raise w.H2Error(w.PROTOCOL_ERROR, "HEADERS shorter than its padding and priority")
        block = payload[start:end]
        if flags & w.END_HEADERS:
            self._header_block(stream, flags, block)
        else:
            self.continuing = (stream, flags, [block])
            self.block_bytes = w.HEAD.size + len(payload)

    def _continuation(self, flags: int, stream: int, payload: bytes) -> None:
        if self.continuing is None or self.continuing[0] != stream:
            raise w.H2Error(w.PROTOCOL_ERROR, f"CONTINUATION on stream {stream} without its HEADERS")
        parts = self.continuing[2]
        parts.append(payload)
        # a running count, frame heads included: empty CONTINUATION frames add up too (a sum over the
        # parts at each frame made a flood of them cost the square of its length: CVE-2024-27316's kind)
        self.block_bytes += w.HEAD.size + len(payload)
        if self.block_bytes > 2 * MAX_HEADER_LIST:
            raise w.H2Error(w.COMPRESSION_ERROR, "header block too large")
        if flags & w.END_HEADERS:
            first_flags = self.continuing[1]
            self.continuing = None
            self._header_block(stream, first_flags, b"".join(parts))

    def _header_block(self, stream: int, flags: int, block: bytes) -> None:
        self.block_began = None  # whole (h2_watch's clock for the next block starts afresh)
        headers, problem = self.decoder.decode_checked(block)  # always: the table must follow every block
        call = self.calls.get(stream)
        if call is not None:
            if problem is self.decoder.oversized and not call.ended:
                self._spend_reset()  # a call the client made the server end, as a malformed one
                self._finish(call, _RESOURCE_EXHAUSTED, problem)
            else:
                self._trailers(call, flags, headers)
            return
        if stream <= self.last_stream:
            early = self.closed_streams.early(stream)
            if early or (early is None and stream <= self.closed_streams.floor):
                return  # late trailers of a call we answered or reset early, or closed long ago
            if early is None:  # streams open in order (RFC 9113 section 5.1.1)
                raise w.H2Error(w.PROTOCOL_ERROR, f"HEADERS opening stream {stream} after {self.last_stream}")
            raise w.H2Error(w.STREAM_CLOSED, f"HEADERS on stream {stream}, which the client closed")
        self.last_stream = stream
        if problem is self.decoder.oversized:  # that call alone ends, as grpc core ends it
            self._spend_reset()
            answer = self._trailers_only(_RESOURCE_EXHAUSTED, problem, ())
            self._headers_only(stream, answer, bool(flags & w.END_STREAM))
            return
        if problem is not None or flags & _SELF_DEPENDENT:  # malformed (section 8.1.1): a stream error
            log.debug("resetting gRPC stream %d: %s", stream, problem or "it depends on itself")
            self._refuse_stream(stream, w.PROTOCOL_ERROR)
            return
        if self.server.stopping or len(self.calls) >= MAX_STREAMS:
            self._write(w.rst_stream(stream, w.REFUSED_STREAM))  # clients retry these elsewhere
            self.closed_streams.note(stream, True)
            return
        self._open(stream, flags, headers)

    def _trailers(self, call: Call, flags: int, headers: w.Headers) -> None:
        """The client's trailers end its half of the call; a block that cannot be its trailers (its
        half over already, no END_STREAM, pseudo-headers, short of its content-length) resets it."""
        if call.ended:  # its half was over already (RFC 9113 section 5.1): a stream error
            self._reset(call, w.STREAM_CLOSED)
            return
        short = self.content_lengths.get(call.stream, 0) if self.content_lengths else 0
        if not flags & w.END_STREAM or flags & _SELF_DEPENDENT or short or w.trailers_problem(headers):
            self._reset(call, w.PROTOCOL_ERROR)  # malformed (section 8.1): that call alone
            return
        if call.streaming:
            self.partial.pop(call.stream, None)
            call.end_requests()
        else:
            call.ended = True
            self._dispatch(call)

    def _refuse_stream(self, stream: int, code: int) -> None:
        """A stream error on a stream with no call (one just opened malformed, or one closed): reset,
        counted as a reset the client made the server make, and its late frames dropped."""
        self._spend_reset()
        self._write(w.rst_stream(stream, code))
        self.closed_streams.note(stream, True)

    def _open(self, stream: int, flags: int, headers: list[tuple[bytes, bytes]]) -> None:
        path = method = content_type = timeout = encoding = length = None
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = value
            elif name == b"grpc-encoding":
                encoding = value
            elif name == b":method":
                method = value
            elif name == b"content-length":
                length = value
        ended = bool(flags & w.END_STREAM)
        if method != b"POST" or content_type is None or not _grpc_content(content_type):
            status = b"405" if method != b"POST" else b"415"  # what gRPC's servers answer
            self._headers_only(stream, w.literal_indexed_name(8, status), ended)
            return
        target, kind = self.server.methods.get(path), Call
        if target is None and (target := self.server.streams.get(path)) is not None:
            kind = StreamCall
        if target is None:
            code = grpc.StatusCode.UNIMPLEMENTED.value[0]
            name = (path or b"").decode(errors="replace")
            details = f"Method not found: {name}"
            self._headers_only(stream, self._trailers_only(code, details, ()), ended)
            return
        if length is not None and not self._declare_length(stream, length, ended):
            return
        call = kind(stream, target[0], target[1], self.peer_window, self.loop)
        call.encoding = encoding if encoding != b"identity" else None
        if timeout is not None and (seconds := w.parse_timeout(timeout)) is not None:
            call.deadline = self.loop.time() + seconds
            call.halfway = call.deadline - seconds / 2
        if kind is StreamCall:
            call.taken = self._grant_taken
            self._open_stream(call, ended)
            return
        self.calls[stream] = call
        if ended:
            call.ended = True
            self._dispatch(call)
        else:
            call.last_read = self.loop.time()
            self.partial[stream] = call
            self.fresh.append(call)  # h2_watch's, after this read

    def _declare_length(self, stream: int, length: bytes, ended: bool) -> bool:
        """Hold a call that declares a content-length (gRPC clients send none) to it: its DATA must add
        up to it (:meth:`_within_content_length`). False, and the stream reset, where it is no length
        (digits, at most 18 of them) or the call has ended with no DATA and declared some."""
        if not length.isdigit() or len(length) > 18 or (ended and int(length)):
            self._refuse_stream(stream, w.PROTOCOL_ERROR)
            return False
        if not ended:
            self.content_lengths[stream] = int(length)
        return True


def _padding(payload: bytes) -> int:
    pad = payload[0] if payload else 0
    if pad >= len(payload):
        raise w.H2Error(w.PROTOCOL_ERROR, "padding longer than its frame")
    return pad
