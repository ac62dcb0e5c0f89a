"""uvicorn's HTTP/1.1 protocol on httptools, as the gateway serves it. Imported through
:func:`serving.protocol.http1.http_protocol` only, which gives each server a subclass with its limits
and picks uvicorn's own protocol where this module's first import fails (httptools missing).

Each response goes out in one write (:mod:`serving.protocol.http1_writes`); a request's head and reads
are bounded (:mod:`serving.protocol.http1_heads`), and so is a client's pause in reading its answers
(:mod:`serving.protocol.send_watch`). A ``POST`` to one of the app's lean routes that the protocol can
take whole is answered here, without uvicorn's ASGI cycle (a :class:`DirectCycle`): ~0.06-0.1 ms less
of event loop a translate request.
"""

from __future__ import annotations

import asyncio
import copy
import weakref
from typing import Any

import httptools
from fastapi import FastAPI
from starlette.requests import ClientDisconnect
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from serving.metric_families import CLIENT_LEFT
from serving.protocol.h2_misdirected import not_http1
from serving.protocol.http1_heads import (
    HEAD_END,
    LINGER_S,
    MAX_HEAD_BYTES,
    PARSER_WARNING,
    READ_TIMEOUT_S,
    HeadLimits,
    HeadRefused,
    unread_bytes,
)
from serving.protocol.http1_writes import JOIN_BYTES, CoalescedWrites
from serving.protocol.lean import ANSWERED_BY_PROTOCOL, LeanRoutes
from serving.protocol.limits import BODY_HOLD, BodyHold
from serving.protocol.request_values import stated_size
from serving.protocol.send_watch import SEND_TIMEOUT_S, SendWatch, unmapped

# HTTP/2 with prior knowledge (a gRPC client) opens with this line: httptools calls it a malformed
# request ("Pause on PRI/Upgrade"); it is the wrong port, and HTTP/2 the version not served here.
H2_PREFACE_LINE = b"PRI * HTTP/2.0\r\n"
H2_ON_HTTP1 = (
    "HTTP/2 is not served on this port, HTTP/1.1 is: a gRPC client belongs on the gateway's gRPC port "
    "(--grpc-port)"
)


QUEUED_REQUESTS = 64  # the most pipelined requests a connection has parsed and waiting their turn
# How long a connection lingers after its last answer when none of the client's bytes are unread at that
# moment (they may still be on their way: a plain close reset a client still sending, ECONNRESET); the
# client's next byte makes it LINGER_S, its FIN (a client closing after reading) ends it at once.
QUIET_LINGER_S = 0.5
SMALLEST_REQUEST = len(b"GET / HTTP/1.0\r\n\r\n")  # a read of n times this holds at most n requests


class QueuedRequestsFirst(FlowControl):
    """uvicorn's flow control of a connection, but its reading stays paused while pipelined requests
    wait their turn, or bytes of the connection wait unparsed for them to be answered
    (:meth:`CoalescingHttpToolsProtocol.data_received`): uvicorn resumed it after every answer (and
    every body read), and a read has every request it holds parsed and queued, so a client that sent
    requests faster than they were answered, reading its answers slowly or not at all, had them all
    read and held (12 MB of 41-byte GETs on one connection: 292 000 requests queued, the gateway 690 MB
    larger). Now a connection holds at most ``QUEUED_REQUESTS`` requests parsed and one read unparsed;
    the next is read once they are answered. The request being answered needs no more bytes while
    others wait behind it (they were parsed after its whole body). It holds its protocol weakly (the
    protocol holds it): a reference cycle kept each closed connection, its parser, cycles and unparsed
    bytes, until the garbage collector's next full pass."""

    def __init__(self, transport: asyncio.Transport, protocol: CoalescingHttpToolsProtocol) -> None:
        super().__init__(transport)
        self.pipeline = protocol.pipeline  # the protocol's queue of parsed requests not yet begun
        self._protocol = weakref.ref(protocol)

    def resume_reading(self) -> None:
        protocol = self._protocol()
        if not self.pipeline and not (protocol is not None and protocol._unparsed):
            super().resume_reading()


class DirectCycle:
    """A request the protocol answers itself (:class:`CoalescingHttpToolsProtocol`): what uvicorn's
    protocol reads of its ``cycle`` (``response_complete``, ``keep_alive``, ``disconnected``,
    ``message_event``), the scope a lean route needs, the body as it arrives, what it holds of the
    body budget, and the answer a stop that cuts it sets (``cut_answer``: a 503, written in place of
    the connection closed without one; :meth:`serving.app.GatewayServer._answer_cuts_503`)."""

    __slots__ = (
        "scope",
        "routes",
        "hold",
        "body",
        "keep_alive",
        "response_complete",
        "disconnected",
        "message_event",
        "cut_answer",
    )

    def __init__(self, scope: dict[str, Any], routes: Any, keep_alive: bool, hold: BodyHold | None) -> None:
        self.scope, self.routes, self.keep_alive = scope, routes, keep_alive
        self.hold = hold  # its Content-Length (then what it inflates to) in the budget until answered
        self.body = bytearray()
        self.response_complete = self.disconnected = False
        self.message_event = _NOBODY_WAITS  # the protocol sets it when the connection is lost
        self.cut_answer: tuple[int, list, bytes] | None = None  # (status, headers, body)


class _NobodyWaits:
    """The ``message_event`` of a :class:`DirectCycle`: nothing awaits it (the body is read whole)."""

    def set(self) -> None:
        pass


_NOBODY_WAITS = _NobodyWaits()


def _release(cycle: DirectCycle) -> None:
    """The cycle's body no longer held (answered, or its connection gone): back to the budget."""
    if cycle.hold is not None:
        cycle.hold.release()


def _count_cut(cycle: DirectCycle) -> None:
    """A lean request whose body never arrived whole (its client left, or the read timeout's 408 ended
    it), counted for the model it names as the app counts a body cut short on its other routes: it
    never reached the app, and the gateway's most used routes counted none of these."""
    refused = cycle.routes.limited.on_refused
    if refused is not None:
        status = cycle.scope.get(ANSWERED_BY_PROTOCOL, CLIENT_LEFT)
        refused(cycle.scope, ClientDisconnect(), status)


def _count_left(cycle: DirectCycle, cut: asyncio.CancelledError, status: int = CLIENT_LEFT) -> None:
    """A lean request whose client left before its answer: a 499 for the model it names, as the other
    routes count it, where :func:`~serving.metrics.observed` has not (``cut`` marked); one that left
    while its body was inflated or parsed (in the JSON helper, behind others) ran into no model and
    was counted nowhere. ``status``: the 503 a stop that cut it answered instead."""
    refused = cycle.routes.limited.on_refused
    if refused is not None:
        refused(cycle.scope, cut, status)


async def _scope_only(scope: Any, receive: Any, send: Any) -> None:
    """The app under :func:`_proxy_headers`' copy of uvicorn's proxy-headers layer: nothing to run."""


# uvicorn's proxy-headers layer of each server's app -> its copy over _scope_only
_PROXY_LAYERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _proxy_headers(app: Any) -> Any | None:
    """uvicorn's proxy-headers layer over ``app`` (``proxy_headers``: ``X-Forwarded-For`` and
    ``X-Forwarded-Proto`` from the hosts ``FORWARDED_ALLOW_IPS`` trusts, 127.0.0.1 and ::1 by default),
    copied over an app that does nothing, so that a lean request's scope gets the client and scheme
    uvicorn's cycle gives it, by uvicorn's own rules; None where the server has no such layer."""
    if not isinstance(app, ProxyHeadersMiddleware):
        return None
    layer = _PROXY_LAYERS.get(app)
    if layer is None:
        layer = _PROXY_LAYERS[app] = copy.copy(app)  # the same trusted hosts
        layer.app = _scope_only
    return layer


class _LingerOnClose:
    """The transport an ASGI cycle writes to, whose ``close`` is the protocol's lingering close. It
    holds the protocol weakly: the protocol holds the cycle, and the cycle this (a reference cycle
    that kept every closed connection until the garbage collector's next full pass); a cycle's task
    holds the protocol while it can still close (uvicorn's ``on_response``, until the task ends)."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: CoalescingHttpToolsProtocol) -> None:
        self._protocol = weakref.ref(protocol)

    def close(self) -> None:
        protocol = self._protocol()
        if protocol is not None:
            protocol._linger()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._protocol().transport, name)


class _LingerIfUnread(_LingerOnClose):
    """The transport every ASGI answer writes to (one a connection): its ``close``, after an answer
    with ``connection: close`` (the client's, an HTTP/1.0 request's, a 500's, the drain's last),
    lingers only where the client's later requests lie unread
    (:meth:`CoalescingHttpToolsProtocol._close_last`). ``write`` and ``is_closing``, called for every
    answer, are the connection's own, bound once."""

    __slots__ = ("write", "is_closing")

    def __init__(self, protocol: CoalescingHttpToolsProtocol) -> None:
        super().__init__(protocol)
        self.write = protocol.transport.write
        self.is_closing = protocol.transport.is_closing

    def close(self) -> None:
        protocol = self._protocol()
        if protocol is not None:
            protocol._close_last()


def _never_answered() -> None:
    """The ``on_response`` of a queued request whose connection was lost: it never begins."""


INTERNAL_ERROR = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")]
# what uvicorn answers when the app raises before answering (with "connection: close")


class CoalescingHttpToolsProtocol(HeadLimits, HttpToolsProtocol):
    """uvicorn's httptools protocol with coalesced writes, bounded heads, reads and sends, and the lean
    routes answered directly (the rules: :func:`serving.protocol.http1.http_protocol`). Its limits are
    the defaults; ``http_protocol`` gives each server a subclass that sets its own."""

    read_timeout = READ_TIMEOUT_S
    max_head = MAX_HEAD_BYTES
    send_timeout = SEND_TIMEOUT_S
    status_lines = STATUS_LINE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._send_watch: SendWatch | None = None  # while the client is not reading our answers
        self._answer_task: asyncio.Task | None = None  # the lean answer being computed (one at a time)
        # the request being answered (a DirectCycle or uvicorn's cycle): ``cycle`` is the last one parsed,
        # which is a request pipelined behind it while it is answered (the stop's cut answers this one)
        self.answering: Any = None
        self._skipped = 0  # body bytes still to come of a request whose upgrade was not taken
        self._unparsed = b""  # what the client sent past QUEUED_REQUESTS queued requests, parsed in turn
        self._quiet_linger = False  # a linger shorter than LINGER_S, made LINGER_S by the client's bytes

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = QueuedRequestsFirst(transport, self)
        if self.client:  # an IPv4 client of --host :: as its IPv4 address (access lines, proxies)
            self.client = unmapped(self.client)  # type: ignore[assignment]
        self.transport = CoalescedWrites(transport, self.loop)  # type: ignore[assignment]
        self._answers = _LingerIfUnread(self)  # what each ASGI cycle writes to and closes
        # uvicorn arms its keep-alive timer only after a response, so a connection that never sent
        # a request was held (a socket and a file descriptor) for as long as its client liked; it
        # gets the allowance of an idle connection between requests (the first byte cancels it)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_watch()
        if self._send_watch is not None:
            self._send_watch.stop()
        if self._lingering is not None:
            self._lingering.cancel()
        if isinstance(self.cycle, DirectCycle):
            _release(self.cycle)  # a body that will never be whole (else its answer releases it)
            if self._answer_task is None and not self.cycle.response_complete:
                _count_cut(self.cycle)
        if self._answer_task is not None:  # nobody will read it: stop the work (a translation's rows)
            self._answer_task.cancel()
        super().connection_lost(exc)
        # uvicorn cancels its keep-alive timer only for a clean close: a connection its client reset
        # (an RST, as load balancers' health checks close) was held, its request and all, by the timer
        # for --keep-alive-s (~11 KB each for 75 s)
        self._unset_keepalive_if_required()
        # the requests that waited their turn never begin, nor are the bytes behind them parsed: each
        # queued cycle held the protocol (its on_response, which uvicorn drops only when a cycle ends),
        # so a client that left mid-pipeline had its connection, and the read kept unparsed, held
        # until the garbage collector's next full pass
        for cycle, _ in self.pipeline:
            cycle.on_response = _never_answered
        self.pipeline.clear()
        self._unparsed = b""

    def eof_received(self) -> bool | None:
        """The client ended its half of the connection (a normal close, ``shutdown(SHUT_WR)``): taken as
        gone, as uvicorn takes it and the README promises, so its requests in flight are cancelled (a
        translation's rows leave the batch at the next step; kept open for its answer, a hung-up client's
        decode ran to its end). What this step already wrote goes out first: :class:`CoalescedWrites`
        held it until the end of the step, and the close that follows had dropped it (an answer written
        as the FIN arrived, read by the client as an empty reply)."""
        self.transport.flush()
        return None

    def pause_writing(self) -> None:
        HttpToolsProtocol.pause_writing(self)
        if self._send_watch is None:
            self._send_watch = SendWatch(self.loop, self.transport, self.send_timeout, self.transport.abort)

    def resume_writing(self) -> None:
        HttpToolsProtocol.resume_writing(self)
        if self._send_watch is not None:
            self._send_watch.stop()
            self._send_watch = None

    def data_received(self, data: bytes) -> None:
        if self._dropping(data):  # refused
            return
        if self._unparsed or (
            len(data) > SMALLEST_REQUEST * (QUEUED_REQUESTS - len(self.pipeline)) and self._queues_past(data)
        ):
            self._received_in_turn(data)
            return
        self._received(data)

    def _queues_past(self, data: bytes) -> bool:
        """Whether parsing ``data`` whole could queue more than ``QUEUED_REQUESTS`` requests: more heads
        may end in it than there is room. The body of a request under way (its Content-Length) begins
        none, so an upload's reads are not searched."""
        start = 0
        if self._in_request and not self._in_head:
            for name, value in self.headers:
                if name == b"content-length":
                    start = int(value) - self._body_seen  # digits: the parser took it
        return data.count(HEAD_END, start) > QUEUED_REQUESTS - len(self.pipeline)

    def _received_in_turn(self, data: bytes) -> None:
        """``data`` parsed a part at a time, each ending after at most as many head ends as the queue
        has room for, until ``QUEUED_REQUESTS`` requests are queued; the rest is kept unparsed, and
        reading paused, until they are answered (:meth:`on_response_complete`). One read of tiny
        requests (41-byte GETs: 6 000 in a 256 KB read) was parsed and queued whole: 0.1-0.2 s of
        event loop every other connection waited on, and their cycles held until answered."""
        data, self._unparsed = self._unparsed + data, b""
        while data:
            upgraded = self.transport.get_protocol() is not self  # a WebSocket
            if self._dropping(data) or self.transport.is_closing() or upgraded:
                return  # refused, closed or upgraded by what was parsed
            room = QUEUED_REQUESTS - len(self.pipeline)
            if room <= 0:
                self._unparsed = data
                self.flow.pause_reading()
                return
            end = -len(HEAD_END)
            for _ in range(room):
                end = data.find(HEAD_END, end + len(HEAD_END))
                if end < 0:
                    break
            cut = len(data) if end < 0 else end + len(HEAD_END)
            part, data = data[:cut], data[cut:]
            self._received(part)

    def on_response_complete(self) -> None:
        if self.pipeline and not self.transport.is_closing():
            self.answering = self.pipeline[-1][0]  # the queued request uvicorn begins next
        super().on_response_complete()
        if self._unparsed and not self.pipeline and not self.transport.is_closing():
            self.data_received(b"")  # the queue answered: what waited behind it, parsed
            self.flow.resume_reading()  # (none where requests wait again, or bytes still do)

    def _received(self, data: bytes) -> None:
        """A read, or a part of one, parsed: the request it leaves unfinished counted and watched."""
        head_of = self.headers if self._in_head else None  # each request has its own list
        fresh, begun = not self._in_request, self._begun
        carried = self._body_seen if self._in_request and head_of is None else None  # a body under way
        self._parse(data)
        if not self._in_request or self.transport.is_closing():
            if fresh and self._begun == begun:  # a read that began no request: CRLFs skipped
                self._idle_again()
            return  # the usual case: each request arrives whole in one read
        self._read_more(data, head_of, fresh, begun, carried)

    def _parse(self, data: bytes) -> None:
        """uvicorn's ``data_received``, but a proposed upgrade the gateway does not take (``h2c``,
        any but a WebSocket it serves, ``CONNECT``) leaves the connection in HTTP/1.1, as RFC 9110 7.8
        lets a server: uvicorn dropped the bytes of the read after its head (pipelined requests
        never answered) and llhttp skips its body, so a body arriving later was read as requests
        (a smuggled one answered). Here the body is the request's (:meth:`_skip_body`) and the
        bytes after it are parsed as the requests they are."""
        self._unset_keepalive_if_required()
        while data:
            if self._skipped:
                data = self._skip_body(data)
                continue
            try:
                self.parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as upgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                    return
                self._unsupported_upgrade_warning()
                data = data[upgrade.args[0] :]
            except httptools.HttpParserError as error:
                if data.startswith(H2_PREFACE_LINE):  # a gRPC client (HTTP/2) on the HTTP port
                    self._refuse_head(505, H2_ON_HTTP1)
                elif self.cycle is None and (wrong := not_http1(data)) is not None:  # TLS, PROXY
                    self.send_400_response(wrong)
                elif isinstance(error.__context__, httptools.HttpParserInvalidURLError):
                    # raised in uvicorn's on_headers_complete (llhttp names it "User callback
                    # error"): a target it could not read (CONNECT's host:port, "http://["). A head
                    # refused, after the answers before it (it was taken for the body of the request
                    # being answered, whose answer was dropped)
                    self._in_head = True
                    self.send_400_response(f"request target {error.__context__}")
                else:
                    self.send_400_response(PARSER_WARNING)
                return

    def _skip_body(self, data: bytes) -> bytes:
        """Hand the part of ``data`` that is the body of a request whose upgrade was not taken to its
        request (the parser skipped it: it takes an upgrade's body for the new protocol's bytes), and
        complete the request with its last byte; the bytes after it."""
        body, rest = data[: self._skipped], data[self._skipped :]
        self._skipped -= len(body)
        self.on_body(body)
        if not self._skipped:
            self.on_message_complete()
        return rest

    def _lean(self) -> tuple[Any, LeanRoutes] | None:
        """The FastAPI app under uvicorn's layers and its lean layer, once the app has built it."""
        app = self.app
        while not isinstance(app, FastAPI):
            app = getattr(app, "app", None)
            if app is None:
                return None
        routes = app.middleware_stack
        return (app, routes) if isinstance(routes, LeanRoutes) else None

    def on_header(self, name: bytes, value: bytes, head_field: Any = HttpToolsProtocol.on_header) -> None:
        if self._in_head:  # (the base called by name: no super() for each field of each request)
            head_field(self, name, value)
        else:  # after the head: a chunked body's trailer field, dropped and counted
            self._trailer_field(name, value)

    def on_headers_complete(self) -> None:
        self._head_whole()  # HeadRefused past the limit
        if self.expect_100_continue and self.parser.get_http_version() == "1.0":
            # RFC 9110 10.1.1: ignored in HTTP/1.0, whose client takes no 1xx answer (15.2): uvicorn's
            # "HTTP/1.1 100 Continue" was read as the final answer, and the real one as garbage
            self.expect_100_continue = False
        if self.parser.should_upgrade() and not self._should_upgrade():
            self._skipped = self._upgrade_body()  # read by _parse, after the parser skips it
        cycle = self.cycle
        if (
            (cycle is None or cycle.response_complete)
            and not self.expect_100_continue
            and self.parser.get_method() == b"POST"
            and not self.parser.should_upgrade()
            and self.limit_concurrency is None
        ):
            direct = self._direct_cycle()
            if direct is not None:
                direct.keep_alive = direct.keep_alive and not self._drained  # HeadLimits.shutdown
                self.cycle = direct  # type: ignore[assignment]
                return
        super().on_headers_complete()
        if self.cycle is not cycle and (cycle is None or cycle.response_complete):
            self.answering = self.cycle  # begun at once (else queued behind the one being answered)
        if self.cycle is not cycle:
            # its close, after an answer with "connection: close", lingers where the client's later
            # requests (pipelined behind it, or a burst that crossed the stop) lie unread, which a
            # plain close would reset; else it closes at once (_close_last)
            self.cycle.transport = self._answers  # type: ignore[assignment]
            if self._drained:  # the last request (HeadLimits.shutdown)
                self.cycle.keep_alive = False
        if self.expect_100_continue and self.cycle is not cycle:
            self.cycle.send = self._closing_if_body_unasked(self.cycle)  # type: ignore[method-assign]

    def _closing_if_body_unasked(self, cycle: Any) -> Any:
        """The ``send`` of a request with ``Expect: 100-continue``: an answer that begins before
        the gateway asked for the body (no ``100 Continue`` written, none of it arrived: a 413 from
        its Content-Length, a 503, a 404) closes the connection (``connection: close``, then a
        lingering close). Its client may send the body or not (RFC 9110 10.1.1), so the bytes that
        follow have no known framing: uvicorn kept the connection open and read the client's next
        request as that body, then answered the one request twice (the 408 of a body that never
        came, read by the client as the answer to its next request, which was never served)."""
        send = cycle.send
        linger = _LingerOnClose(self)  # made here: the closure, which the cycle holds, holds no protocol

        async def send_closing(message: dict) -> None:
            unasked = cycle.waiting_for_100_continue and cycle.more_body and not cycle.body
            if unasked and not cycle.response_started:
                cycle.keep_alive = False  # uvicorn writes "connection: close", then closes:
                cycle.transport = linger  # with a lingering close
            await send(message)

        return send_closing

    def _linger(self, seconds: float = LINGER_S) -> None:
        """Close after the answer written, as after a refusal: our FIN, what the client still sends
        dropped, closed at its FIN or after ``seconds`` (closing with its bytes unread resets the
        connection, and the reset can overtake the answer); a linger shorter than LINGER_S becomes
        LINGER_S at the first byte the client still sends (:meth:`_dropping`)."""
        self._stop_watch()  # the body will not be read: no 408 for it
        self._deferred = None  # nor a refusal for a head behind it (written after our end of the stream)
        self._unparsed = b""  # nor the requests behind those
        self.pipeline.clear()  # requests queued behind it are never answered: the connection ends
        # reading, paused while they waited, resumes now, to drop the client's bytes and read its FIN:
        # an answer cut short (an app that raised or returned mid-body) never reaches on_response_complete,
        # and the close it makes lingered with reading paused, LINGER_S whatever the client did, then reset
        # the connection over the answers before it still in the socket (5 of 101 arrived, ECONNRESET)
        self.flow.resume_reading()
        self.transport.write_eof()
        self._lingering = self.loop.call_later(seconds, self.transport.close)
        self._quiet_linger = seconds < LINGER_S

    def _dropping(self, data: bytes) -> bool:
        if self._quiet_linger and self._lingering is not None and data:  # the client is still sending
            self._quiet_linger = False
            self._lingering.cancel()
            self._lingering = self.loop.call_later(LINGER_S, self.transport.close)
        return super()._dropping(data)

    def _close_last(self) -> None:
        """Close after the connection's last answer (``connection: close``: the client's, HTTP/1.0's,
        a 500's, the drain's): lingering where the client's later requests lie unread or unanswered
        (queued, kept unparsed, a head or body begun, bytes in the socket: requests pipelined
        behind it, a burst that crossed the stop), which a plain close would reset, and the reset
        discarded the answers still on their way to the client (a client that pipelined requests
        behind a 500 got its first few answers, then ``ECONNRESET``); else for ``QUIET_LINGER_S`` at
        most (RFC 9112 9.6 closes in stages): none of the client's bytes are here, but some may be on
        their way (a pipelining client's, sent after the gateway had answered; one sending past its own
        close), and a plain close reset the answer under them. A client that closes after reading ends
        it at once; one that keeps its socket held the server's stop LINGER_S longer where every close
        lingered that long. Reading paused is no sign of unread requests: it stays paused while the
        last request of a pipeline is answered (:class:`QueuedRequestsFirst`)."""
        unread = self.pipeline or self._unparsed or self._in_request
        if unread or unread_bytes(self.transport):
            self._linger()
        else:
            self._linger(QUIET_LINGER_S)

    def shutdown(self) -> None:
        """The drain's (:meth:`HeadLimits.shutdown`), but where the answer it makes the connection's last
        closes it while the client's later requests lie unread (pipelined past what was read: reading
        pauses while requests wait, :class:`QueuedRequestsFirst`), that close lingers: a plain close
        with bytes unread resets the connection, and the reset discarded the answers still in the
        socket's buffer (a client reading slowly got its first few answers, then ``ECONNRESET``).
        Not where reading is only paused: it stays so while a pipeline's last request is answered, with
        nothing unread (:meth:`_close_last` reads the socket at the close)."""
        super().shutdown()
        cycle = self.cycle
        if (
            self.pipeline
            and cycle is not None
            and not isinstance(cycle, DirectCycle)
            and not cycle.response_complete
            and not cycle.keep_alive
        ):
            cycle.transport = _LingerOnClose(self)  # type: ignore[assignment]

    def _upgrade_body(self) -> int:
        """The Content-Length of a request proposing an upgrade the gateway will not take, whose
        body the parser skips; a chunked one is refused (400: its end could not be found)."""
        for name, value in self.headers:
            if name == b"transfer-encoding":
                self._refuse_head(400, "a request proposing an Upgrade must not have a chunked body")
                raise HeadRefused
            if name == b"content-length":
                return int(value)  # digits: the parser refused any other Content-Length
        return 0

    def _direct_cycle(self) -> DirectCycle | None:
        lean = self._lean()
        if lean is None or b"%" in self.url:
            return None
        app, routes = lean
        length = None
        for name, value in self.headers:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                return None
        size = None if length is None else stated_size(length)
        if size is None or size > routes.limited.max_bytes:
            return None  # uvicorn's path answers these (411-free bodies, 413)
        url = httptools.parse_url(self.url)
        scope = self.scope
        http_version = self.parser.get_http_version()
        scope["method"] = "POST"
        if http_version != "1.1":
            scope["http_version"] = http_version
        scope["path"] = self.root_path + url.path.decode("ascii")
        scope["raw_path"] = self.root_path.encode("ascii") + url.path
        scope["query_string"] = url.query or b""
        target = routes.target(scope)
        if target is None:
            return None
        budget, hold = routes.limited.budget, None
        if budget is not None:
            hold = BodyHold(budget)
            if not hold.hold(size):
                return None  # uvicorn's path answers it (503) through the same budget
            scope[BODY_HOLD] = hold
        scope["kiln.lean_route"], scope["path_params"] = target
        scope["app"] = app
        keep_alive = http_version != "1.0" and self.parser.should_keep_alive()
        return DirectCycle(scope, routes, keep_alive, hold)

    def on_body(self, body: bytes) -> None:
        self._body_seen += len(body)
        cycle = self.cycle
        if isinstance(cycle, DirectCycle):
            cycle.body += body  # at most the Content-Length checked against the limit
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._skipped:  # the parser's, before the body it skipped: _skip_body completes it
            return
        self._in_request = self._in_head = False  # _stop_watch, inline: every request passes here
        self._last_body = self._body_seen  # where the head after it begins (HeadLimits._head_start)
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        cycle = self.cycle
        if isinstance(cycle, DirectCycle):
            self.answering = cycle
            task = self._answer_task = self.loop.create_task(self._answer(cycle))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)  # the server waits for these when it shuts down
        else:
            super().on_message_complete()

    async def _answer(self, cycle: DirectCycle) -> None:
        response = None
        try:
            proxy = _proxy_headers(self.app)
            if proxy is not None:  # the client behind a proxy, as uvicorn's cycle writes it in its
                await proxy(cycle.scope, None, None)  # access line (these wrote the proxy's address)
            response = await cycle.routes.respond(cycle.scope, bytes(cycle.body))
            status, headers, body = response.status_code, response.raw_headers, response.body
        except asyncio.CancelledError as cut:
            if cycle.disconnected or self.transport.is_closing():
                _count_left(cycle, cut)
                return  # its client left (connection_lost): no answer to write
            if cycle.cut_answer is None:
                raise
            # the stop cut it (its grace ran out, a second Ctrl-C): its 503, then the connection's end
            (status, headers, body), cycle.keep_alive, response = cycle.cut_answer, False, None
            _count_left(cycle, cut, status)  # cut before its model (in the JSON helper): counted nowhere
        except BaseException as exc:  # as uvicorn's cycle: logged, a 500, the connection closed
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            status, headers, body = 500, INTERNAL_ERROR, b"Internal Server Error"
            cycle.keep_alive, response = False, None
        finally:
            _release(cycle)
        if cycle.disconnected or self.transport.is_closing():
            return
        if self.access_log:
            self.access_logger.info(  # uvicorn's arguments: its AccessFormatter unpacks five
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(cycle.scope),  # type: ignore[arg-type]
                cycle.scope["method"],
                get_path_with_query_string(cycle.scope),  # type: ignore[arg-type]
                cycle.scope["http_version"],
                status,
            )
        lines = [b"%s: %s\r\n" % pair for pair in (*self.server_state.default_headers, *headers)]
        end = b"\r\n" if cycle.keep_alive else b"connection: close\r\n\r\n"
        head = (STATUS_LINE[status], *lines, end)
        if len(body) < JOIN_BYTES:
            self.transport.write(b"".join((*head, body)))
        else:  # a large body is not copied (CoalescedWrites writes it beside its head)
            self.transport.write(b"".join(head))
            self.transport.write(body)
        cycle.response_complete = True
        self._answer_task = None  # answered: its background task runs whether the client stays or not
        if not cycle.keep_alive:  # the connection's last answer: the client's later requests (pipelined,
            self._close_last()  # a burst that crossed the stop) may lie unread (then it lingers)
        self.on_response_complete()
        if response is not None and response.background is not None:
            await response.background()  # after the answer, as Starlette runs it
