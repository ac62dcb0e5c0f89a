"""How long a gRPC call's request, or a frame, may take to arrive, for Kiln's HTTP/2 server (:mod:`grpc_h2`).

A call is dispatched when its client ends its half of the stream; until then its bytes are held. The
server used to hold such a call for as long as the connection lasted, past the deadline its client
sent (``grpc-timeout``), so a client could keep up to ``MAX_STREAMS`` half-sent calls on one connection
forever. Now a call whose request has not arrived whole by its deadline ends DEADLINE_EXCEEDED, as grpc
core's servers end it, and one whose DATA pauses longer than the read timeout (the gateway's
``KILN_READ_TIMEOUT_S``, the same allowance HTTP/1 bodies get between reads) ends DEADLINE_EXCEEDED
too. The clock stops while the server is not reading the connection (its client is not reading the
answers: :meth:`grpc_h2.Connection.pause_writing`). A call that arrives whole in one read costs
nothing here; a half-sent one a dict entry and a place in a heap of expiries, so the watch, one timer
a connection armed only while a call is half-sent or a frame unfinished, wakes for the first call to
expire and looks at no other (it walked every half-sent call at each wake-up: 1 024 calls whose
deadlines fell a millisecond apart cost a million steps).

The connection itself is watched the same way. A frame begun and then left unfinished over the read
timeout, or a header block (HEADERS and its CONTINUATION frames) not whole within the read timeout of
its first bytes, ends the connection: while a header block is open no other frame may arrive (RFC
9113 section 6.10), so a client stalling one would hold the connection, and the bytes it sent, forever.
This is HTTP/1's rule too (:mod:`serving.protocol.http1`: a head whole within the timeout, a body that
may pause that long between reads). And a DATA frame still arriving holds its declared length in the
process's body budget from its head on (:meth:`PartialCalls._hold_frame`), as an HTTP/1 body holds its
Content-Length.
"""

from __future__ import annotations

import heapq
import logging

import grpc

from serving.protocol import h2_wire as w
from serving.protocol.grpc_call import Call
from serving.protocol.h2_state import ConnectionState

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 30.0  # a call's DATA may pause this long (the gateway passes KILN_READ_TIMEOUT_S)
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


class PartialCalls(ConnectionState):
    """A mixin of :class:`grpc_h2.Connection`: the calls whose request is still arriving, and the timer
    that ends those that take too long."""

    def _expiry(self, call: Call) -> float:
        """When ``call`` ends unless more of it arrives: its deadline, or a read timeout after its last DATA."""
        paused = call.last_read + self.server.read_timeout_s
        return paused if call.deadline is None else min(paused, call.deadline)

    def _connection_expiry(self) -> float | None:
        """When the connection ends unless its unfinished frame or header block moves on (None: none)."""
        timeout, frame, block = self.server.read_timeout_s, self.frame_read, self.block_began
        if frame is None:
            return None if block is None else block + timeout
        return frame + timeout if block is None else min(frame, block) + timeout

    def _watch_fresh(self) -> None:
        """The calls opened by the last read and still half-sent after it join the heap, and the watch
        wakes for the first to expire. (Most calls arrive whole in the read that opens them: their
        HEADERS open them half-sent, their DATA ends them, and they never reach the heap.)"""
        fresh, partial, expiries = self.fresh, self.partial, self.expiries
        first = None
        for call in fresh:
            if partial.get(call.stream) is call:
                expiry = self._expiry(call)
                heapq.heappush(expiries, (expiry, call.stream))
                first = expiry if first is None else min(first, expiry)
        fresh.clear()
        if first is None:
            return
        if len(expiries) > 2 * len(partial) + 64:  # mostly calls long gone: keep the live ones
            self.expiries = [(self._expiry(c), s) for s, c in partial.items()]
            heapq.heapify(self.expiries)
        if self.watch is None or first < self.watch.when():
            self._arm_watch()

    def _arm_watch(self) -> None:
        """Arm the watch for the first half-sent call or unfinished frame to expire."""
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        if self.closing:
            return
        first = self._connection_expiry()
        if self.expiries:  # the first may be a call gone since: the watch then wakes for nothing
            calls = self.expiries[0][0]
            first = calls if first is None else min(first, calls)
        if first is not None:
            self.watch = self.loop.call_at(first, self._expire_partial)

    def _unfinished(self) -> None:
        """A read left a frame or a header block unfinished: note when, and make sure the watch runs."""
        if not self.preface:
            return  # the handshake's own timer waits for the preface
        now, buffer = self.loop.time(), self.buffer
        if len(buffer) >= 9 and buffer[3] == w.DATA:  # a call's DATA arriving in pieces: it is moving
            stream = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
            call = self.partial.get(stream)
            if call is not None:
                call.last_read = now
            if not self.reserved and self.server.budget is not None:
                self._hold_frame(stream, buffer)
            buffer = self.buffer
        self.frame_read = now if buffer or self.skip else None
        if self.continuing is None and not (len(buffer) >= 4 and buffer[3] in (w.HEADERS, w.CONTINUATION)):
            self.block_began = None
        elif self.block_began is None:
            self.block_began = now
        expiry = self._connection_expiry()
        if expiry is not None and (self.watch is None or expiry < self.watch.when()):
            self._arm_watch()

    def _hold_frame(self, stream: int, buffer: bytearray) -> None:
        """A DATA frame begun in the buffer: the bytes it will hold are counted in the body budget now,
        as the frame's declared length (as HTTP/1's Content-Length is at the head), not only once it is
        whole, or clients leaving frames unfinished on many connections held up to 1 MiB each outside
        the budget. A frame for a call already gone (reset STREAM_CLOSED where its client had closed it, as
        ``_data`` resets it), or past the budget (its call ends UNAVAILABLE), is dropped as it arrives
        instead of gathered."""
        length = buffer[0] << 16 | buffer[1] << 8 | buffer[2]
        call = self.calls.get(stream)
        if call is None:
            if not 0 < stream <= self.last_stream:
                return  # not a call's: an error once whole
            if self.closed_streams.client_closed(stream):  # its client had closed it: told so now, once
                self._write(w.rst_stream(stream, w.STREAM_CLOSED))
                self.closed_streams.note(stream, True)
        elif call.ended:
            return  # a stream error once whole
        elif call.holds_message():
            return  # counted already: a large message's buffer is held whole from its prefix on
        elif self.server.budget.take(length):
            self.reserved = length
            return
        else:  # the message's first bytes so far shown to its servicer (counted as other refusals are)
            data = bytes(buffer[w.HEAD.size :])
            if buffer[4] & w.PADDED:
                data = data[1:]  # the pad length; the padding itself trails the data
            self._finish(call, *call.refused(data, UNAVAILABLE, self.server.budget.refusal().message))
        self.skip = w.HEAD.size + length - len(buffer)
        self.buffer = bytearray()
        self._received(length)

    def _expire_partial(self) -> None:
        self.watch = None
        if self.closing:
            return
        now = self.loop.time()
        if self.reading_paused:  # the server is the wait: the clocks restart
            self.frame_read = None if self.frame_read is None else now
            self.block_began = None if self.block_began is None else now
        expiry = self._connection_expiry()
        if expiry is not None and expiry <= now:
            what = "a header block" if self.block_began is not None else "a frame"
            message = f"{what} not received whole within {self.server.read_timeout_s:g} s"
            log.info("closing a gRPC connection from %s: %s", self.client, message)
            self._write(w.goaway(self.last_stream, w.PROTOCOL_ERROR, message))
            self._flush()
            self._close_quietly()
            return
        expiries = self.expiries
        while expiries and expiries[0][0] <= now:
            stream = heapq.heappop(expiries)[1]
            call = self.partial.get(stream)
            if call is None:
                continue  # dispatched, reset or ended meanwhile
            if self.reading_paused or call.backlogged():
                call.last_read = now  # the server is the wait, not the client
            expiry = self._expiry(call)
            if expiry > now:  # more of it arrived: back in line for its new expiry
                heapq.heappush(expiries, (expiry, stream))
                continue
            if call.deadline is not None and call.deadline <= now:
                details = "Deadline Exceeded"  # grpc core's words
            else:
                timeout = self.server.read_timeout_s
                log.debug("ending gRPC call %d: its request paused over %g s", call.stream, timeout)
                details = f"request message not received within {timeout:g} s"
            # told to the servicer (counted for the model its first bytes name, as HTTP/1 counts a
            # body its read timeout ended): no servicer ever sees the call otherwise
            del self.partial[stream]  # a stream's trailers may wait behind its answers: expired once
            self._finish(call, *call.refused(b"", DEADLINE_EXCEEDED, details))
        self._arm_watch()

    def _stop_watch(self) -> None:
        self.partial.clear()
        self.fresh.clear()
        self.expiries.clear()
        self.frame_read = self.block_began = None
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
