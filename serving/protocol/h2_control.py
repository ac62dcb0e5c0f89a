"""The control frames of Kiln's HTTP/2 gRPC connection, checked as RFC 9113 section 6 says: SETTINGS,
PING, PRIORITY, GOAWAY, PUSH_PROMISE, WINDOW_UPDATE and RST_STREAM, and the budget of calls a client
may end early, by resetting them or by making the server reset them.

:class:`ControlFrames` is a mixin of :class:`serving.protocol.grpc_h2.Connection`: it reads and changes
the connection's state (its calls, windows and peer settings) and answers through its writer; a
connection error raises :class:`~serving.protocol.h2_wire.H2Error`, which the connection turns into
GOAWAY, and a stream error ends that call alone (``Connection._reset``).
"""

from __future__ import annotations

from serving.protocol import h2_wire as w
from serving.protocol.grpc_call import Call
from serving.protocol.h2_state import ConnectionState

# Calls a client may reset: a burst, then so many a second. Opening and resetting calls in a loop
# ("rapid reset", CVE-2023-44487), or making the server reset them with a malformed frame ("MadeYouReset",
# CVE-2025-8671), costs the server a dispatch each and the client nothing; a connection past its
# budget is closed with ENHANCE_YOUR_CALM. A call its client resets past half its own timeout
# (grpc-timeout) spends nothing: that is its deadline ending it (the server's timer would have, and a
# client may already end calls at that rate with short timeouts), and under overload a client's calls
# time out by the hundred a second (50 ms deadlines: ~730 a second on one channel, whose connection was
# closed with its calls in flight). Only once the call has lived DEADLINE_RESET_AFTER_S too: with a tiny
# timeout (grpc-timeout 1m, or 1u) half of it is over at once, and calls opened and reset in a flood
# spent nothing. So a client ends calls for free no faster than 20 ms deadlines would end them (a call
# with a shorter timeout is ended by the server's deadline, or its reset spends).
RESET_BURST = 200
RESET_RATE = 100.0
DEADLINE_RESET_AFTER_S = 0.02
# changes of SETTINGS_INITIAL_WINDOW_SIZE a connection may make (each walks its open calls): a burst,
# then so many a second (grpc's window tuning makes a few in a call's first seconds, then rarely)
WINDOW_CHANGE_BURST = 100
WINDOW_CHANGE_RATE = 10.0


class ControlFrames(ConnectionState):
    """SETTINGS, PING, PRIORITY, GOAWAY, PUSH_PROMISE, WINDOW_UPDATE and RST_STREAM of a connection."""

    def _rst_stream(self, flags: int, stream: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise w.H2Error(w.FRAME_SIZE_ERROR, f"a {len(payload)}-byte RST_STREAM")
        if stream == 0 or stream > self.last_stream:
            raise w.H2Error(w.PROTOCOL_ERROR, f"RST_STREAM on stream {stream}, which was never opened")
        call = self.calls.pop(stream, None)
        self.blocked.pop(stream, None)
        self.parked.pop(stream, None)
        self.partial.pop(stream, None)
        if call is None:
            return
        self.closed_streams.note(stream, False)  # a frame but PRIORITY on it now is the client's error
        self._release(call)
        if not self._deadlines_reset(call):
            self._spend_reset()
        if call.task is not None:
            call.task.cancel()  # the client gave up (deadline, cancel): so does the servicer
        self._maybe_idle()

    def _deadlines_reset(self, call: Call) -> bool:
        """Whether the client's reset of ``call``, now, is its deadline's (spending no budget): past half
        its timeout, and ``DEADLINE_RESET_AFTER_S`` after the call opened."""
        if call.halfway is None:
            return False
        opened = call.halfway - (call.deadline - call.halfway)  # halfway: half its timeout on
        return self.loop.time() >= max(call.halfway, opened + DEADLINE_RESET_AFTER_S)

    def _settings(self, flags: int, stream: int, payload: bytes) -> None:
        if stream != 0:
            raise w.H2Error(w.PROTOCOL_ERROR, f"SETTINGS on stream {stream}")
        if len(payload) % 6 or (flags & w.ACK and payload):
            raise w.H2Error(w.FRAME_SIZE_ERROR, f"a {len(payload)}-byte SETTINGS")
        if flags & w.ACK:
            return
        for at in range(0, len(payload), 6):
            key, value = (
                int.from_bytes(payload[at : at + 2], "big"),
                int.from_bytes(payload[at + 2 : at + 6], "big"),
            )
            if key == w.INITIAL_WINDOW_SIZE:
                if value > w.MAX_WINDOW:
                    raise w.H2Error(w.FLOW_CONTROL_ERROR, f"initial window {value}")
                delta, self.peer_window = value - self.peer_window, value
                if delta:
                    self._change_windows(delta)
            elif key == w.MAX_FRAME_SIZE:
                if not w.DEFAULT_FRAME_SIZE <= value <= (1 << 24) - 1:
                    raise w.H2Error(w.PROTOCOL_ERROR, f"max frame size {value}")
                self.peer_frame = value
            elif key == w.ENABLE_PUSH and value > 1:
                raise w.H2Error(w.PROTOCOL_ERROR, f"enable push {value}")
            elif key == w.HEADER_TABLE_SIZE:
                self.table_update = b"\x20"  # we keep no dynamic table: say so, size 0, in our next block
        self._write(w.frame(w.SETTINGS, w.ACK, 0))
        self._pump()

    def _ping(self, flags: int, stream: int, payload: bytes) -> None:
        if stream != 0:
            raise w.H2Error(w.PROTOCOL_ERROR, f"PING on stream {stream}")
        if len(payload) != 8:
            raise w.H2Error(w.FRAME_SIZE_ERROR, f"a {len(payload)}-byte PING")
        if not flags & w.ACK:
            self._write(w.frame(w.PING, w.ACK, 0, payload))

    def _priority(self, flags: int, stream: int, payload: bytes) -> None:
        """Priorities are advice (RFC 9113 deprecates them): every call is answered as it completes. A
        PRIORITY of the wrong length, or making its stream depend on itself, is a stream error (sections
        6.3, 5.3.1): its call reset, or, on a stream with no call (idle or closed, where a RST_STREAM has
        no place), the connection ended, as section 5.4.1 allows for any stream error."""
        if stream == 0:
            raise w.H2Error(w.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            code, problem = w.FRAME_SIZE_ERROR, f"a {len(payload)}-byte PRIORITY on stream {stream}"
        elif int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == stream:
            code, problem = w.PROTOCOL_ERROR, f"stream {stream} depends on itself"
        else:
            return
        call = self.calls.get(stream)
        if call is None:
            raise w.H2Error(code, problem)
        self._reset(call, code)

    def _goaway(self, flags: int, stream: int, payload: bytes) -> None:
        """The client opens no more calls; those open finish, and it closes the connection itself."""
        if stream != 0:
            raise w.H2Error(w.PROTOCOL_ERROR, f"GOAWAY on stream {stream}")
        if len(payload) < 8:
            raise w.H2Error(w.FRAME_SIZE_ERROR, f"a {len(payload)}-byte GOAWAY")

    def _push_promise(self, flags: int, stream: int, payload: bytes) -> None:
        raise w.H2Error(w.PROTOCOL_ERROR, "a client may not push")

    def _window_update(self, flags: int, stream: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise w.H2Error(w.FRAME_SIZE_ERROR, f"a {len(payload)}-byte WINDOW_UPDATE")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream == 0:
            if increment == 0:
                raise w.H2Error(w.PROTOCOL_ERROR, "a connection window update of 0")
            if self.send_window + increment > w.MAX_WINDOW:
                raise w.H2Error(w.FLOW_CONTROL_ERROR, f"connection window above 2^31-1 by {increment}")
            self.send_window += increment
        elif (call := self.calls.get(stream)) is not None:  # errors on a call's window end that call
            if increment == 0 or call.send_window + increment > w.MAX_WINDOW:
                self._reset(call, w.PROTOCOL_ERROR if increment == 0 else w.FLOW_CONTROL_ERROR)
                return
            call.send_window += increment
            if call.send_window > 0 and self.parked.pop(stream, None) is not None:
                self.blocked[stream] = call  # its answer may move again
        elif stream > self.last_stream:
            raise w.H2Error(w.PROTOCOL_ERROR, f"WINDOW_UPDATE on stream {stream}, which was never opened")
        if self.blocked:
            self._pump()

    def _change_windows(self, delta: int) -> None:
        """The client changed its initial window: every open call's window moves by ``delta`` (RFC 9113
        section 6.9.2), and waiting answers move between parked and blocked. A walk over the calls,
        so a client may make only so many of these changes (past them, ENHANCE_YOUR_CALM)."""
        now = self.loop.time()
        self.window_budget = (
            min(WINDOW_CHANGE_BURST, self.window_budget + (now - self.window_at) * WINDOW_CHANGE_RATE) - 1
        )
        self.window_at = now
        if self.window_budget < 0:
            raise w.H2Error(w.ENHANCE_YOUR_CALM, "too many changes of the initial window size")
        for call in self.calls.values():
            call.send_window += delta
            if call.send_window > w.MAX_WINDOW:
                raise w.H2Error(w.FLOW_CONTROL_ERROR, f"stream {call.stream}'s window above 2^31-1")
        now_open = [s for s, call in self.parked.items() if call.send_window > 0]
        now_shut = [s for s, call in self.blocked.items() if call.send_window <= 0]
        for stream in now_open:
            self.blocked[stream] = self.parked.pop(stream)
        for stream in now_shut:
            self._park(self.blocked.pop(stream))

    def _spend_reset(self) -> None:
        """A call ended before its answer, by the client's RST_STREAM or by a stream error it provoked
        (which would otherwise reset calls past the budget: "MadeYouReset", CVE-2025-8671)."""
        now = self.loop.time()
        self.reset_budget = min(RESET_BURST, self.reset_budget + (now - self.reset_at) * RESET_RATE) - 1
        self.reset_at = now
        if self.reset_budget < 0:
            raise w.H2Error(w.ENHANCE_YOUR_CALM, "too many calls reset")
