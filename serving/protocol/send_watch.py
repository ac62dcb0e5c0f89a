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
# How often a paused connection's buffer is looked at. The buffer only shrinks when the client takes
# bytes, but it grows as answers are written (a gRPC connection's other calls go on answering while its
# writes are paused), so a growth can hide a take; looking often keeps takes from being missed.
LOOK_S = 1.0
SLACK_S = 1e-3  # a look due within this of the deadline decides (timers may fire a hair early)


def client_address(transport: Any) -> str:
    """The client of ``transport`` as a log line names it, ``host:port`` (an IPv6 host in brackets, as
    uvicorn's access lines are written), so an operator can tell which client a connection's line is
    about; ``a client`` where the transport does not say."""
    extra_info = getattr(transport, "get_extra_info", None)  # a test's stand-in may have none
    peer = extra_info("peername") if extra_info is not None else None
    if not isinstance(peer, tuple) or len(peer) < 2:
        return "a client"
    return peer_name(peer)


def peer_name(peer: tuple[Any, ...]) -> str:
    """``host:port`` of a socket's peer address, an IPv6 host in brackets (``[::1]:59496``: ``::1:59496``
    does not say which part is the port) and an IPv4 client of a dual-stack socket as its IPv4 address."""
    host, port = unmapped(peer)[:2]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def unmapped(peer: tuple[Any, ...]) -> tuple[Any, ...]:
    """``peer`` with an IPv4-mapped IPv6 host (``::ffff:10.0.0.5``, an IPv4 client of a socket bound to
    ``::`` for both families) written as the IPv4 address it is, as Go's servers write it: the same
    client then reads the same in HTTP and gRPC lines, and uvicorn's trusted proxies (127.0.0.1) match."""
    host = peer[0]
    if isinstance(host, str) and host[:7].lower() == "::ffff:" and "." in host:
        return (host[7:], *peer[1:])
    return peer


class SendWatch:
    """Armed by a connection's ``pause_writing``, disarmed by its ``resume_writing``; calls ``abort``
    when ``timeout_s`` passes with no byte of the transport's buffer taken by the client."""

    __slots__ = ("loop", "transport", "timeout_s", "abort", "buffered", "deadline", "timer")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, transport: Any, timeout_s: float, abort: Callable[[], None]
    ) -> None:
        self.loop, self.transport, self.timeout_s, self.abort = loop, transport, timeout_s, abort
        self.buffered = transport.get_write_buffer_size()
        self.deadline = loop.time() + timeout_s
        self.timer: asyncio.TimerHandle | None = loop.call_later(self._next_look(timeout_s), self._check)

    def _next_look(self, left: float) -> float:
        return min(LOOK_S, self.timeout_s / 4, left)

    def _check(self) -> None:
        self.timer = None
        buffered, now = self.transport.get_write_buffer_size(), self.loop.time()
        if buffered < self.buffered:  # the client took some since the last look: it is reading, slowly
            self.deadline = now + self.timeout_s
        self.buffered = buffered  # grown by answers written meanwhile, or shrunk by the client
        left = self.deadline - now
        if left > SLACK_S:
            self.timer = self.loop.call_later(self._next_look(left), self._check)
            return
        log.info(
            "closing a connection whose client (%s) read none of its answers in %g s",
            client_address(self.transport),
            self.timeout_s,
        )
        self.abort()

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
