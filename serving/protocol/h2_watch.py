"""How long a gRPC call's request may take to arrive, for Kiln's HTTP/2 server (:mod:`grpc_h2`).

A call is dispatched when its client ends its half of the stream; until then its bytes are held. The
server used to hold such a call for as long as the connection lasted, past the deadline its client
sent (``grpc-timeout``), so a client could keep up to ``MAX_STREAMS`` half-sent calls on one connection
forever. Now a call whose request has not arrived whole by its deadline ends DEADLINE_EXCEEDED, as grpc
core's servers end it, and one whose DATA pauses longer than the read timeout (the gateway's
``KILN_READ_TIMEOUT_S``, the same allowance HTTP/1 bodies get between reads) ends DEADLINE_EXCEEDED
too. The clock stops while the server is not reading the connection (its client is not reading the
answers: :meth:`grpc_h2.Connection.pause_writing`). A call that arrives whole in one read costs a dict
insert and removal; the watch is one timer a connection, armed only while a call is half-sent.
"""

from __future__ import annotations

import logging

import grpc

from serving.protocol.grpc_call import Call
from serving.protocol.h2_state import ConnectionState

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 30.0  # a call's DATA may pause this long (the gateway passes KILN_READ_TIMEOUT_S)
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


class PartialCalls(ConnectionState):
    """A mixin of :class:`grpc_h2.Connection`: the calls whose request is still arriving, and the timer
    that ends those that take too long."""

    def _expiry(self, call: Call) -> float:
        """When ``call`` ends unless more of it arrives: its deadline, or a read timeout after its last DATA."""
        paused = call.last_read + self.server.read_timeout_s
        return paused if call.deadline is None else min(paused, call.deadline)

    def _arm_watch(self) -> None:
        """Arm the watch for the first half-sent call to expire (none armed yet: the caller checks)."""
        if self.partial and not self.closing:
            first = min(map(self._expiry, self.partial.values()))
            self.watch = self.loop.call_at(first, self._expire_partial)

    def _expire_partial(self) -> None:
        self.watch = None
        if self.closing:
            return
        now = self.loop.time()
        for call in list(self.partial.values()):
            if self.reading_paused:
                call.last_read = now  # the server is the wait, not the client
            if self._expiry(call) > now:
                continue
            if call.deadline is not None and call.deadline <= now:
                self._finish(call, DEADLINE_EXCEEDED, "Deadline Exceeded")  # grpc core's words
            else:
                timeout = self.server.read_timeout_s
                log.debug("ending gRPC call %d: its request paused over %g s", call.stream, timeout)
                self._finish(call, DEADLINE_EXCEEDED, f"request message not received within {timeout:g} s")
        self._arm_watch()

    def _stop_watch(self) -> None:
        self.partial.clear()
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
