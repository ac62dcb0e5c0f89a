"""The frames that carry a gRPC call's request into Kiln's HTTP/2 server (:mod:`grpc_h2`): HEADERS and
its CONTINUATION frames open a call (its method found, its deadline and encoding read, or an answer
at once: 405/415 for what is not gRPC, UNIMPLEMENTED for an unknown method, REFUSED_STREAM past
``MAX_STREAMS`` or while the server stops) or end the client's half of one with trailers; DATA feeds a
call's message, granting the client more window as it is read. Each is checked as RFC 9113 says: a
stream or connection error, never a call left half open. Also the limits the server advertises in its
SETTINGS (:meth:`grpc_h2.Connection.connection_made`) and holds clients to here.

:class:`RequestFrames` is a mixin of :class:`serving.protocol.grpc_h2.Connection`, as the control
frames (:mod:`h2_control`) are: a whole request goes to :mod:`h2_calls` (``_dispatch``), a streaming
call's messages to :mod:`h2_streams`, a half-sent one to :mod:`h2_watch`'s clock.
"""

from __future__ import annotations

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


def _grpc_content(content_type: bytes) -> bool:
    """``application/grpc``, alone or with a ``+codec`` or parameters, as grpc core accepts it (not
    ``application/grpc-web``, whose framing differs: its client would misread our answers)."""
    return content_type[:16] == b"application/grpc" and content_type[16:17] in (b"", b"+", b";")


class RequestFrames(ConnectionState):
    """HEADERS, CONTINUATION and DATA of a connection: calls opened, fed and ended by their client."""

    def _data(self, flags: int, stream: int, payload: bytes) -> None:
        self.unacked += len(payload)
        if self.unacked >= CONNECTION_WINDOW // 2:
            self._write(w.window_update(0, self.unacked))
            self.unacked = 0
        call = self.calls.get(stream)
        if call is None:
            if stream == 0 or stream > self.last_stream:
                raise w.H2Error(w.PROTOCOL_ERROR, f"DATA on stream {stream}, which is not open")
            return  # a call we answered or reset already: the bytes are counted above, then dropped
        if call.ended:  # DATA after the client's END_STREAM (RFC 9113 section 5.1)
            self._reset(call, w.STREAM_CLOSED)
            return
        received = len(payload)
        if not received and not flags & w.END_STREAM:
            return  # an empty frame: nothing held, and no progress for the read timeout to see
        if flags & w.PADDED:
            payload = payload[1 : len(payload) - _padding(payload)]
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
            call.unacked += received
            if call.unacked >= STREAM_WINDOW // 2:
                self._write(w.window_update(stream, call.unacked))
                call.unacked = 0
        elif call.streaming:
            call.end_requests()
        else:
            self._dispatch(call)

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
        headers = self.decoder.decode(block)  # always: the table must follow every block
        call = self.calls.get(stream)
        if call is not None:  # the client's trailers end its half of the call
            if call.ended:  # its half was over already (RFC 9113 section 5.1): a stream error
                self._reset(call, w.STREAM_CLOSED)
                return
            if not flags & w.END_STREAM:
                raise w.H2Error(w.PROTOCOL_ERROR, f"second HEADERS on stream {stream} without END_STREAM")
            if call.streaming:
                call.end_requests()
            else:
                call.ended = True
                self._dispatch(call)
            return
        if stream <= self.last_stream:
            return  # a call we reset already
        self.last_stream = stream
        if self.server.stopping or len(self.calls) >= MAX_STREAMS:
            self._write(w.rst_stream(stream, w.REFUSED_STREAM))  # clients retry these elsewhere
            return
        self._open(stream, flags, headers)

    def _open(self, stream: int, flags: int, headers: list[tuple[bytes, bytes]]) -> None:
        path = method = content_type = timeout = encoding = None
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
        call = kind(stream, target[0], target[1], self.peer_window, self.loop)
        call.encoding = encoding if encoding != b"identity" else None
        if timeout is not None and (seconds := w.parse_timeout(timeout)) is not None:
            call.deadline = self.loop.time() + seconds
        if kind is StreamCall:
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


def _padding(payload: bytes) -> int:
    pad = payload[0] if payload else 0
    if pad >= len(payload):
        raise w.H2Error(w.PROTOCOL_ERROR, "padding longer than its frame")
    return pad
