"""How long a client may leave the gateway's answers unread: nginx's ``send_timeout``, for both protocols.

When a client stops reading, its socket's buffers fill and asyncio calls the connection's
``pause_writing``; the connection then stops reading that client too (back-pressure), and the read
timeouts stop counting, since the server is the wait (:mod:`serving.protocol.http1`,
:mod:`serving.protocol.h2_watch`). Without a bound on the pause, a client could hold a connection for
ever, with everything the connection holds: its half-sent requests' bytes in the process's body budget,
up to ``MAX_STREAMS`` half-sent gRPC calls, the answers waiting to leave. So a connection whose writes
stay paused ``timeout_s`` (``KILN_SEND_TIMEOUT_S``, 60 s as nginx's) with nothing of its buffered answer
taken by the client in that time is aborted; a client that reads, however slowly, keeps it open, as with
nginx, whose timeout runs between two successive writes. The watch exists only while writes are paused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 60.0


class SendWatch:
    """Armed by a connection's ``pause_writing``, disarmed by its ``resume_writing``; calls ``abort``
    when ``timeout_s`` passes with no byte of the transport's buffer taken by the client."""

    __slots__ = ("loop", "transport", "timeout_s", "abort", "buffered", "timer")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, transport: Any, timeout_s: float, abort: Callable[[], None]
    ) -> None:
        self.loop, self.transport, self.timeout_s, self.abort = loop, transport, timeout_s, abort
        self.buffered = transport.get_write_buffer_size()
        self.timer: asyncio.TimerHandle | None = loop.call_later(timeout_s, self._check)

    def _check(self) -> None:
        self.timer = None
        buffered = self.transport.get_write_buffer_size()
        if buffered < self.buffered:  # the client took some: it is reading, slowly
            self.buffered = buffered
            self.timer = self.loop.call_later(self.timeout_s, self._check)
            return
        log.info("closing a connection whose client read none of its answers in %g s", self.timeout_s)
        self.abort()

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
