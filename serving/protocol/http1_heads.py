"""The limits of :mod:`serving.protocol.http1` on a request before the app sees it: a head's size
(414 / 431, counted from its first byte), a head's and a body's read time (408), the lingering
close after such a refusal, and the keep-alive close that never drops a request already sent. Kept
apart from the protocol's answering paths; the protocol class mixes :class:`HeadLimits` in over
uvicorn's httptools protocol, whose attributes it reads."""

from __future__ import annotations

import array
import asyncio
import json
import logging
import re
import sys
from typing import Any

from serving.protocol.lean import ANSWERED_BY_PROTOCOL
from serving.protocol.send_watch import peer_name

try:
    from fcntl import ioctl
    from termios import FIONREAD
except ImportError:  # not POSIX: the keep-alive close cannot see unread bytes, and closes as uvicorn
    ioctl = FIONREAD = None  # type: ignore[assignment]

READ_TIMEOUT_S = 30.0  # a request's head must arrive within this of its first byte; its body may
# pause no longer between reads (408 after it): nginx's client_header_timeout / client_body_timeout
MAX_HEAD_BYTES = 64 << 10  # a request line and headers (414 / 431 above it): nginx's are 32 KiB
# After such a refusal the client's bytes are read and dropped for a while, and the connection closed
# when the client ends its half: closing a socket with unread bytes resets it, and the reset can reach
# the client before the answer it has not read yet (nginx's lingering close does the same).
LINGER_S = 2.0
LINGER_BYTES = 4 << 20
HEAD_FRAMING = len(b"  HTTP/1.1\r\n\r\n")  # a head's bytes besides its method, URL and headers
HEAD_END = b"\r\n\r\n"  # every head ends so (llhttp, strict, takes no bare LF), and a chunked body too
PARSER_WARNING = "Invalid HTTP request received."  # uvicorn's, for any request its parser refuses
# A Host's value: RFC 3986's host (reg-name, IPv4 or an IP-literal in brackets, with RFC 6874's zone:
# [fe80::1%25eth0]) and optional port, or empty; llhttp took any visible characters ("x y", "a/b@c"),
# which RFC 9112 3.2 answers 400.
HOST_VALUE = re.compile(rb"(?:[A-Za-z0-9\-._~%!$&'()*+,;=]*|\[[0-9A-Za-z:.\-_~%!$&'()*+,;=]+\])(?::[0-9]*)?")
_host_value = HOST_VALUE.fullmatch  # (~0.3 us a request)


def framing_refusal(version: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, str] | None:
    """The refusal (status, reason) of a head that httptools' parser takes but RFC 9112 does not, or
    None: a version other than HTTP/1.0 and 1.1 (505: llhttp reads ``HTTP/2.0`` and a bare HTTP/0.9
    line, which were answered in HTTP/1.1), more than one Host or none in HTTP/1.1, or one that is
    not a host[:port] (400, a MUST of RFC 9112 3.2), a transfer coding besides chunked (501, RFC
    9112 6.1: llhttp takes ``gzip, chunked`` and the app was handed the coded bytes as the body)."""
    if version != "1.1" and version != "1.0":
        return 505, f"HTTP/{version} is not supported: use HTTP/1.1"
    hosts = 0
    for name, value in headers:
        if name == b"host":
            hosts += 1
            if _host_value(value) is None:  # RFC 9112 3.2: 400 to an invalid Host, a MUST
                return 400, f"Host {value.decode('latin-1')!r} is not a host[:port] (RFC 3986 authority)"
        elif name == b"transfer-encoding":
            codings = [c.strip().lower() for c in value.split(b",") if c.strip()]
            if codings != [b"chunked"]:
                shown = value.decode("latin-1")
                return 501, f"Transfer-Encoding {shown!r} is not supported: only chunked, once"
    if hosts > 1 or (hosts == 0 and version == "1.1"):
        return 400, f"a request needs exactly one Host header (HTTP/1.0: at most one), not {hosts}"
    return None


def unread_bytes(transport: Any) -> int:
    """The bytes the client has sent that wait unread in the connection's socket (0 where that cannot
    be known: no socket, closed, or not POSIX)."""
    sock = transport.get_extra_info("socket")
    if sock is None or ioctl is None:
        return 0
    waiting = array.array("i", [0])
    try:
        ioctl(sock.fileno(), FIONREAD, waiting)
    except (OSError, ValueError):  # closed meanwhile (fileno -1)
        return 0
    return waiting[0]


class HeadRefused(Exception):
    """Raised in the parser's callback when a head is refused whole: the parse stops there."""


class _ParserWarningDropped:
    """uvicorn's logger for one connection, without the warning uvicorn logs for every request its
    parser refuses ("Invalid HTTP request received.", no client, no reason): ``send_400_response``
    logs the refusal with its reason, and a head the limits refused was logged already."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if msg != PARSER_WARNING:
            self._logger.warning(msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


class HeadLimits:
    """Head and read limits for uvicorn's ``HttpToolsProtocol`` (mixed in before it): the state of the
    request being read, the read watchdog, refusals and the lingering close after them. The protocol
    sets ``read_timeout``, ``max_head``, ``send_timeout`` and ``status_lines`` (uvicorn's STATUS_LINE)."""

    read_timeout: float
    max_head: int
    send_timeout: float
    status_lines: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # the request being read: its head not yet whole, bytes of it counted, the read watchdog
        self._in_request = self._in_head = False
        self._head_bytes = 0
        self._begun = 0  # requests begun on the connection (whether a read's head began it)
        self._body_seen = self._last_body = 0  # body bytes handed over: the request's, the last ended's
        self._counted = self._counted_bytes = 0  # headers of this head summed so far, their bytes
        self._waited: Any = None  # the answer the watch last found the client waiting on
        self._read_timer: asyncio.TimerHandle | None = None
        self._read_since = self._last_read = 0.0
        self._lingering: asyncio.TimerHandle | None = None  # a refusal written: drop, then close
        self._deferred: tuple[int, str] | None = None  # a head refused while an answer goes out
        self._dropped = 0
        self._trailer_bytes = 0  # the trailer fields of this request's chunked body, summed
        self.logger = _ParserWarningDropped(self.logger)

    def _dropping(self, data: bytes) -> bool:
        """Whether the connection's request was refused: then what the client still sends is dropped
        (and the connection closed past LINGER_BYTES of it)."""
        if self._lingering is None and self._deferred is None:
            return False
        self._dropped += len(data)
        if self._dropped > LINGER_BYTES:
            self.transport.close()
        return True

    def _read_more(self, data: bytes, head_of: Any, fresh: bool, begun: int, carried: int | None) -> None:
        """After a read that left a request unfinished: its head counted (414 / 431 past the limit) and
        the read watchdog armed. A head still not whole after this read: all of the read is head where
        the head began in an earlier one (``head_of``, its header list then), or at this read's first
        byte (``fresh``: no request under way before it, none begun since ``begun``); where it began
        after another request in the read, the read's bytes from :meth:`_head_start` (``carried``: the
        body bytes of the request under way before the read, None where none was in its body). That
        case counted what the parser handed over only, not the header it was in: a head pipelined
        behind another could grow a read (256 KB) past the limit before its 431."""
        self._last_read = self.loop.time()
        if self._in_head:
            if head_of is self.headers:
                self._head_bytes += len(data)
            elif fresh and self._begun == begun + 1:
                self._head_bytes = len(data)
            else:
                self._head_bytes = len(data) - self._head_start(data, begun, carried)
            if self._head_over(max(self._head_bytes, self._head_parsed())):
                return
        if self._read_timer is None:
            self._read_since, self._waited = self._last_read, None
            self._read_timer = self.loop.call_later(self.read_timeout, self._read_watch)

    def _head_start(self, data: bytes, begun: int, carried: int | None) -> int:
        """Where in ``data`` the head being read began, another request having ended in it before: after
        the read's last head end (the head holds none), and as many bytes after it as that request's
        body had in the read (``self._last_body``, less ``carried`` where the read began in it). That
        request's head ended there or before, so the head is never counted over (but for the bytes of
        a head end split between two reads); it is counted short only where that body holds a head end
        of its own or is chunked (then its framing, not its length, follows the head end)."""
        in_read = self._last_body
        if carried is not None and self._begun == begun + 1:  # the read began in that body
            in_read -= carried
        end = data.rfind(HEAD_END)
        return min(len(data), (0 if end < 0 else end + len(HEAD_END)) + in_read)

    def _head_whole(self) -> None:
        """The whole head, counted however it arrived (its headers, URL and the request line's rest)
        and read as RFC 9112 frames it: :class:`HeadRefused` past the limit or where
        :func:`framing_refusal` refuses it, raised in the parser's callback to stop the parse."""
        if self._head_over(self._head_parsed() + len(self.parser.get_method()) + HEAD_FRAMING):
            raise HeadRefused  # stops the parser, before the request is dispatched
        refusal = framing_refusal(self.parser.get_http_version(), self.headers)
        if refusal is not None:
            self._refuse_head(*refusal)
            raise HeadRefused
        self._in_head = False

    def _head_parsed(self) -> int:
        """The bytes of this request's head that the parser has handed over (its URL and whole
        headers): the part of the read it began in that is this request's, at least. Each header
        is summed once (a head trickled a header a read would otherwise cost its square)."""
        headers = self.headers
        if len(headers) > self._counted:
            self._counted_bytes += sum(len(n) + len(v) + 4 for n, v in headers[self._counted :])
            self._counted = len(headers)
        return len(self.url) + self._counted_bytes

    def _head_over(self, size: int) -> bool:
        """Whether this request's head, ``size`` bytes so far, is over the limit: then refused, 414
        for its request line alone, else 431, once the answers before it have gone out."""
        if len(self.url) > self.max_head:
            status, message = 414, f"request line longer than {self.max_head} bytes"
        elif size > self.max_head:
            status, message = 431, f"request line and headers longer than {self.max_head} bytes"
        else:
            return False
        self._refuse_head(status, message)
        return True

    def _refuse_head(self, status: int, message: str) -> None:
        """Refuse this request's head, once the answers before it have gone out."""
        if self._answering():  # (in a head: an earlier request's answer) it goes out first
            self._stop_watch()
            self._deferred = (status, message)
        else:
            self._refuse(status, message)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._deferred is not None and self.cycle.response_complete:  # every answer before it out
            (status, message), self._deferred = self._deferred, None
            if not self.transport.is_closing():
                self._refuse(status, message)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request its parser refuses (called where it catches the parser's
        error): the gateway's JSON error naming the parser's reason, logged once and closed as the
        other refusals are (uvicorn's was plain text, "Invalid HTTP request received."); nothing
        where on_headers_complete stopped the parser: refused already. A head refused while
        earlier requests are answered waits for their answers (it closed the connection at once:
        a valid request before a malformed one went unanswered)."""
        if self._lingering is not None or self._deferred is not None or self.transport.is_closing():
            return  # (closing: refused already, a trailer section past the limit)
        reason = (sys.exc_info()[1] or msg) if msg == PARSER_WARNING else msg  # else the protocol's
        self._refuse_request(400, f"invalid HTTP request: {reason}")

    def _refuse_request(self, status: int, message: str) -> None:
        """Refuse the request being read, in its head or its body (:meth:`send_400_response`)."""
        cycle = self.cycle
        if self._in_head or cycle is None or cycle.response_complete:
            self._refuse_head(status, message)  # a request of its own: after the answers before it
        elif any(queued is cycle for queued, _ in self.pipeline):
            self._stop_watch()  # the body of a request queued behind an answer under way: a
            self.transport.close()  # refusal now would be read as that answer
        else:  # the body of the request being answered: it will never be whole
            cycle.scope[ANSWERED_BY_PROTOCOL] = status  # its app counts it so, not as a client gone
            cycle.disconnected = True  # its app reads a disconnect and writes nothing more
            cycle.message_event.set()
            self._refuse(status, message)

    def _trailer_field(self, name: bytes, value: bytes) -> None:
        """A trailer field of the chunked body being read (RFC 9112 7.1.2): dropped, not merged into
        the request's headers (RFC 9110 6.5.1; uvicorn appended it to them, where the app had read
        them already), and counted: a trailer section longer than the head limit is refused (431),
        where uvicorn held it without a bound (200 MB of trailer fields grew the gateway 215 MB)."""
        self._trailer_bytes += len(name) + len(value) + 4
        if self._trailer_bytes > self.max_head:
            self._refuse_request(431, f"request trailer section longer than {self.max_head} bytes")
            raise HeadRefused

    def timeout_keep_alive_handler(self) -> None:
        """uvicorn's keep-alive expiry, but a connection whose client has sent its next request is
        not closed. uvloop (the gateway's loop) runs expired timers before its next read, so where
        the loop was held past the expiry (by work done in another connection's read) a request
        sent well within the keep-alive was closed unread, and closing a socket with unread bytes
        resets it: the client's ``ConnectionResetError``, a balancer's 502. The read that follows
        cancels the timer armed again here; a client that sent only its FIN is closed as before."""
        if self.transport.is_closing():
            return
        if unread_bytes(self.transport):
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )
            return
        self.transport.close()

    _drained = False  # the drain began: the request that was arriving then is the connection's last

    def shutdown(self) -> None:
        """uvicorn's drain of this connection at a stop, but a request that has begun to arrive on a
        connection between requests (its head half read, or its bytes unread in the socket) is
        answered, with ``connection: close``, and then the connection closes. uvicorn closed it at
        once, and closing a socket with unread bytes resets it: a keep-alive client whose next
        request crossed the stop signal got ``ConnectionResetError`` for a request never served (the
        protocol's ``on_headers_complete`` makes that request the last, :attr:`_drained`). A connection
        closing in stages already (its last answer or a refusal written, then our FIN: ``_lingering``)
        is left to end itself, at the client's FIN or within LINGER_S: uvicorn's close here reset the
        connection at the client's next byte, and the reset discarded the answers still in its socket
        (a stop during a pipeline's ``Connection: close`` linger: ``ECONNRESET``, 5 of 101 answers)."""
        if self._lingering is not None:
            return
        cycle = self.cycle
        between = cycle is None or cycle.response_complete
        if between and not self.transport.is_closing() and (self._in_request or unread_bytes(self.transport)):
            self._drained = True
            return
        super().shutdown()

    def _idle_again(self) -> None:
        """After a read that began no request on a connection between requests: nothing but the CRLFs
        RFC 9112 2.2 lets a client send before a request line, which the parser skips. The read
        cancelled the keep-alive timer, and nothing armed it again (the socket was held for as long
        as the client liked), and where the drain had kept the connection for the request those
        bytes seemed to begin, it waited on it until the grace ran out: the drain's check again
        (:meth:`shutdown`), else the keep-alive timer."""
        cycle = self.cycle
        answering = cycle is not None and not cycle.response_complete  # arms the timer once answered
        if answering or self._lingering is not None or self._deferred or self.transport.is_closing():
            return  # (a refusal closes the connection itself)
        if self._drained:
            self.shutdown()
        elif self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def on_message_begin(self) -> None:
        self._in_request = self._in_head = True
        self._head_bytes = self._counted = self._counted_bytes = self._body_seen = 0
        self._trailer_bytes = 0
        self._begun += 1
        super().on_message_begin()

    def _read_watch(self) -> None:
        """The read watchdog: 408 to a head not whole ``read_timeout`` after it began, or a body
        silent that long, unless the gateway itself is the wait (reading paused, or an earlier
        request of the connection still being answered); else armed again for what is left."""
        self._read_timer = None
        if not self._in_request or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused or self._answering():
            self._read_since = self._last_read = now  # the client waits on us: its clock restarts
            self._waited = self.cycle
        elif self._waited is not None:  # that answer has gone out since: the allowance starts again
            self._read_since = self._last_read = now
            self._waited = None
        left = (self._read_since if self._in_head else self._last_read) + self.read_timeout - now
        if left > 0:
            self._read_timer = self.loop.call_later(left, self._read_watch)
            return
        part = "headers" if self._in_head else "body"
        if not self._in_head and not self._answered_before_body():  # the app's request, its body cut
            self.scope[ANSWERED_BY_PROTOCOL] = 408  # by this answer: counted as answered
        self.logger.debug("closing a connection whose request %s took over %g s", part, self.read_timeout)
        self._refuse(408, f"request {part} not received within {self.read_timeout:g} s")

    def _stop_watch(self) -> None:
        self._in_request = self._in_head = False
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _answering(self) -> bool:
        """Whether the connection is writing an answer: to an earlier request while this one's head
        arrives (pipelining), or to this one before its body is whole (an app that answers early)."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return False
        return self._in_head or getattr(cycle, "response_started", False)

    def _answered_before_body(self) -> bool:
        """Whether the request being read is in its body and already answered (a 413 from its
        Content-Length, a 404 or 405 that never reads it): its body is read and dropped, and where
        it pauses past the read timeout (408) or turns malformed (400), the connection closes without
        a second answer (one was written: the client read it as its next request's)."""
        cycle = self.cycle
        return self._in_request and not self._in_head and cycle is not None and cycle.response_complete

    def _refusing_a_head_request(self) -> bool:
        """Whether the request refused is a HEAD, whose answer has no body (RFC 9110 9.3.2: a client
        reads none, and took the JSON error for bytes after the answer). Its method is known once
        its URL has begun."""
        return (
            bool(getattr(self, "url", b""))
            and self.parser is not None
            and self.parser.get_method() == b"HEAD"
        )

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request the protocol will not read further, and close the connection after a
        lingering close (at once, without an answer, where one is under way: the two would
        interleave)."""
        answering = self._answering()
        answered = self._answered_before_body()
        self._stop_watch()
        if status != 408:
            peer = peer_name(self.client) if self.client else "a client"
            self.logger.warning("refused a request from %s: %s", peer, message)
        if answering:
            self.transport.close()
            return
        if answered:  # a second answer to the request would be read as the answer to the next one
            self.transport.write_eof()  # our end, then the lingering close: the answer sent is read
            self._lingering = self.loop.call_later(LINGER_S, self.transport.close)
            return
        body = json.dumps({"error": message}).encode("ascii")  # the gateway's error body
        head = [
            self.status_lines[status],
            *(b"%s: %s\r\n" % pair for pair in self.server_state.default_headers),
        ]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        content = b"" if self._refusing_a_head_request() else body  # (its Content-Length all the same)
        self.transport.write(b"".join((*head, b"connection: close\r\n\r\n", content)))
        self.transport.write_eof()  # the answer, then our end of the connection (the client's
        # end closes it: eof_received; or LINGER_S, or LINGER_BYTES more from it)
        self._lingering = self.loop.call_later(LINGER_S, self.transport.close)
