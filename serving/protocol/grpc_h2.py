"""The gateway's own gRPC server: gRPC over HTTP/2 on the event loop the backend runs on.

grpc.aio serves a call through gRPC core's threads: its poller thread reads the socket and hands
each of a call's four completions to the event loop by a one-byte socket write and a loop wake-up,
27-42 system calls a unary call, and grpc's Cython took ~0.25 ms of event loop a request at
concurrency 64 against ~0.07 ms of Kiln's own Python (docs/performance-log.md, the twenty-sixth
session). Here the event loop reads the connection itself: one ``recv`` carries the frames of many
calls, each call is parsed, dispatched to the servicer as a task and answered with its three frames
(headers, message, trailers) joined into the connection's one write of that loop step.

What it speaks: HTTP/2 over cleartext with prior knowledge (how every gRPC client reaches an insecure
port), unary and bidirectional streaming methods of the servicer it is given (streams:
:mod:`serving.protocol.h2_streams`; others answer UNIMPLEMENTED, as grpcio does), requests compressed
with gzip or deflate, flow control both ways, SETTINGS, PING, RST_STREAM, CONTINUATION and GOAWAY (the
frames that carry a call's request, HEADERS, CONTINUATION and DATA, in
:mod:`serving.protocol.h2_requests` with the limits the server advertises; the control frames in
:mod:`serving.protocol.h2_control`), with RFC 9113's connection and stream errors
(tests/test_grpc_h2_conformance.py); a call whose request does not arrive in time ends
DEADLINE_EXCEEDED, and a frame or header block left unfinished ends the connection
(:mod:`serving.protocol.h2_watch`); a client that stops reading is cut after the send timeout
(:mod:`serving.protocol.send_watch`). No frame a client may repeat costs the server more than a step:
header blocks are counted as they arrive, empty DATA frames dropped, answers waiting for window visited
only when they can move, and changes of the initial window budgeted. A call's life once its request has
arrived (dispatch, its deadline, answer within flow control, end) is :mod:`serving.protocol.h2_calls`.
Servicers see a context with ``abort``, ``time_remaining`` and ``set_trailing_metadata``, the part of
grpc.aio's ``ServicerContext`` the KServe servicer uses (:class:`serving.protocol.grpc_call.Call`,
which also carries the call through this module).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

from serving.protocol import h2_wire as w
from serving.protocol.grpc_call import Call, Handler
from serving.protocol.h2_calls import Calls
from serving.protocol.h2_control import RESET_BURST, WINDOW_CHANGE_BURST, ControlFrames
from serving.protocol.h2_misdirected import misdirected
from serving.protocol.h2_requests import (
    CONNECTION_WINDOW,
    FRAME_SIZE,
    MAX_HEADER_LIST,
    MAX_STREAMS,
    STREAM_WINDOW,
    ClosedStreams,
    RequestFrames,
)
from serving.protocol.h2_streams import StreamCalls
from serving.protocol.h2_watch import READ_TIMEOUT_S, PartialCalls
from serving.protocol.http1_writes import joined_runs
from serving.protocol.limits import BodyBudget
from serving.protocol.send_watch import SEND_TIMEOUT_S, SendWatch, client_address

log = logging.getLogger(__name__)

# TCP keepalive on every connection, as grpcio's server pings an idle peer every 2 h and drops it 20 s
# after an unanswered ping: without it a client gone without a close (a crashed host, a dropped
# network) held its connection, its file descriptor and its state for the gateway's whole life.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 7200, 20, 3
HANDSHAKE_TIMEOUT_S = 120.0  # a client must begin HTTP/2 (its preface) within this: grpc core's default


class Connection(RequestFrames, ControlFrames, PartialCalls, Calls, StreamCalls, asyncio.Protocol):
    """One client connection: frames in, calls dispatched, answers out within flow control."""

    def __init__(self, server: H2GrpcServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.client = "a client"  # its address, host:port, in the connection's log lines
        self.buffer = bytearray()  # the start of a frame not yet whole
        self.reserved = 0  # h2_watch's: the body budget held for the DATA frame in the buffer
        self.skip = 0  # h2_watch's: bytes still to drop of a DATA frame nobody will read
        self.preface = False
        self.greeted = False  # the server's SETTINGS are written (_greet)
        self.handshake: asyncio.TimerHandle | None = None
        self.decoder = w.HeaderDecoder(max_list_size=MAX_HEADER_LIST, check=w.request_problem)
        self.calls: dict[int, Call] = {}
        self.partial: dict[int, Call] = {}  # h2_watch's: calls still arriving, when they expire, the timer
        self.expiries: list[tuple[float, int]] = []
        self.fresh: list[Call] = []
        self.watch: asyncio.TimerHandle | None = None
        self.reading_paused = False
        self.send_watch: SendWatch | None = None  # while the client is not reading our answers
        self.blocked: dict[int, Call] = {}  # calls whose message waits for the connection's window, in order
        self.parked: dict[int, Call] = {}  # calls whose message waits for their own window
        self.window_watch: asyncio.TimerHandle | None = None  # h2_calls': while answers wait for window
        self.data_sent = self.window_mark = 0
        self.last_stream = 0
        self.closed_streams = ClosedStreams()  # h2_requests': which ends closed the streams closed lately
        self.content_lengths: dict[int, int] = {}  # h2_requests': DATA still due where a call declared it
        self.continuing: tuple[int, int, list[bytes]] | None = None
        self.block_bytes = 0  # the open header block's bytes, its frames' heads counted
        self.frame_read: float | None = None  # h2_watch's: the last read into a frame not yet whole
        self.block_began: float | None = None  # h2_watch's: when the header block not yet whole began
        self.out: list[bytes | memoryview] = []
        self.large_out = False  # ``out`` may hold a piece of JOIN_BYTES or more (h2_calls' _pump)
        self.flush_pending = False
        self.send_window = w.DEFAULT_WINDOW
        self.peer_window = w.DEFAULT_WINDOW  # the client's SETTINGS_INITIAL_WINDOW_SIZE
        self.peer_frame = w.DEFAULT_FRAME_SIZE
        self.unacked = 0
        self.table_update = b""  # a size update owed at the start of our next header block
        self.closing = False
        self.reset_budget, self.reset_at = float(RESET_BURST), self.loop.time()  # h2_control's budgets
        self.window_budget, self.window_at = float(WINDOW_CHANGE_BURST), self.reset_at
        self.frames = {
            w.DATA: self._data,
            w.HEADERS: self._headers,
            w.PRIORITY: self._priority,
            w.RST_STREAM: self._rst_stream,
            w.SETTINGS: self._settings,
            w.PUSH_PROMISE: self._push_promise,
            w.PING: self._ping,
            w.GOAWAY: self._goaway,
            w.WINDOW_UPDATE: self._window_update,
            w.CONTINUATION: self._continuation,
        }

    # --- asyncio.Protocol ---
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.client = client_address(transport)
        keep_alive(transport.get_extra_info("socket"))
        self.server.connections.add(self)
        self.handshake = self.loop.call_later(HANDSHAKE_TIMEOUT_S, self._no_preface)

    def _greet(self) -> None:
        """Write the server's preface (SETTINGS, then the connection's window), once: only once the
        client's first bytes have arrived (RFC 9113 3.4 lets it wait), so that a client that is not
        HTTP/2 can be answered in its own protocol (h2_misdirected) rather than read binary first."""
        if self.greeted:
            return
        self.greeted = True
        settings = {
            w.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            w.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            w.MAX_FRAME_SIZE: FRAME_SIZE,
            w.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
        }
        window = w.window_update(0, CONNECTION_WINDOW - w.DEFAULT_WINDOW)
        self.transport.write(w.settings_frame(settings) + window)

    def _not_http2(self, data: bytes) -> None:
        """Tell a client whose first bytes are not the HTTP/2 preface (an HTTP/1.1 request, TLS, a
        PROXY header: a port mixed up) what this port is, in its protocol where it has one, then close."""
        what, answer = misdirected(data)
        log.warning("closing a gRPC connection from %s: %s", self.client, what)
        if answer is None:
            self._greet()
            answer = w.goaway(0, w.PROTOCOL_ERROR, what)
        self.transport.write(answer)
        self._close_quietly()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.handshake is not None:
            self.handshake.cancel()
        if self.send_watch is not None:
            self.send_watch.stop()
        if self.window_watch is not None:
            self.window_watch.cancel()
            self.window_watch = None
        self.server.connections.discard(self)
        self._stop_watch()
        if self.reserved:
            self.server.budget.give(self.reserved)
            self.reserved = 0
        for call in self.calls.values():
            self._release(call)
            if call.task is not None:
                call.task.cancel()
        self.calls.clear()
        self.blocked.clear()
        self.parked.clear()
        self.server.idle.set()

    def pause_writing(self) -> None:  # a client that does not read stops being read, for a while
        self.reading_paused = True
        self.transport.pause_reading()
        if self.send_watch is None:
            self.send_watch = SendWatch(self.loop, self.transport, self.server.send_timeout_s, self._abort)

    def resume_writing(self) -> None:
        self.reading_paused = False
        self.transport.resume_reading()
        if self.send_watch is not None:
            self.send_watch.stop()
            self.send_watch = None

    def _abort(self) -> None:
        self.closing = True
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.skip:  # the rest of a DATA frame nobody will read (h2_watch's _hold_frame): dropped
            if len(data) <= self.skip:
                self.skip -= len(data)
                self.frame_read = self.loop.time() if self.skip else None
                return
            data, self.skip = data[self.skip :], 0
        if self.buffer:  # the rest of a frame: gathered until it is whole, then read with what follows
            self.buffer += data
            if not self._whole(self.buffer):
                self._unfinished()
                return
            data, self.buffer = bytes(self.buffer), bytearray()
            if self.reserved:  # its bytes are the call's now (_data counts them)
                self.server.budget.give(self.reserved)
                self.reserved = 0
        if not self.preface:
            if len(data) < len(w.PREFACE) and w.PREFACE.startswith(data):
                self.buffer = bytearray(data)
                return
            if not data.startswith(w.PREFACE):
                self._not_http2(data)  # not HTTP/2 with prior knowledge
                return
            self.preface, data = True, data[len(w.PREFACE) :]
            self.handshake.cancel()
            self._greet()
        try:
            self._frames(data)
        except w.H2Error as error:
            self._fail(error.code, str(error))
            return
        if self.buffer or self.continuing is not None or self.skip:
            self._unfinished()
        elif self.frame_read is not None or self.block_began is not None:
            self.frame_read = self.block_began = None
        if self.fresh:
            self._watch_fresh()
        self._flush()

    def _frames(self, data: bytes) -> None:
        at, size, head, frames = 0, len(data), w.HEAD.unpack_from, self.frames
        while size - at >= 9 and not self.closing:
            high, low, kind, flags, stream = head(data, at)
            length = high << 16 | low
            if length > FRAME_SIZE:
                raise w.H2Error(w.FRAME_SIZE_ERROR, f"a {length}-byte frame, above {FRAME_SIZE}")
            end = at + 9 + length
            if end > size:
                break
            payload = data[at + 9 : end]
            at = end
            if self.continuing is not None and kind != w.CONTINUATION:
                raise w.H2Error(w.PROTOCOL_ERROR, "a header block was interrupted")
            handle = frames.get(kind)
            if handle is not None:  # unknown frame types are ignored (RFC 9113 section 4.1)
                handle(flags, stream & 0x7FFFFFFF, payload)
        if at < size:
            self.buffer = bytearray(data[at:])

    def _whole(self, buffer: bytearray) -> bool:
        """Whether ``buffer`` holds the preface or its first frame whole (or a frame too large to wait for)."""
        if not self.preface:
            return len(buffer) >= len(w.PREFACE) or not w.PREFACE.startswith(buffer)
        if len(buffer) < 9:
            return False
        length = buffer[0] << 16 | buffer[1] << 8 | buffer[2]
        return length > FRAME_SIZE or len(buffer) >= 9 + length

    # --- bytes out ---
    def _write(self, data: bytes) -> None:
        """Queue bytes for this loop step's one write (a batch's answers leave together)."""
        self.out.append(data)
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write what this step queued: joined into one write, but each piece of ``JOIN_BYTES`` or
        more (a large answer's tensors) written as it is, beside the joined rest (as HTTP/1's
        ``CoalescedWrites``): joining copied it on the event loop."""
        self.flush_pending = False
        if self.out and not self.closing:
            if self.large_out:
                for part in joined_runs(self.out):
                    self.transport.write(part)
            else:
                self.transport.write(b"".join(self.out))
        self.out.clear()
        self.large_out = False

    def _fail(self, code: int, message: str) -> None:
        log.warning("closing a gRPC connection from %s: %s", self.client, message)
        self.out.append(w.goaway(self.last_stream, code, message))
        self._flush()
        self._close_quietly()

    def _no_preface(self) -> None:
        """A connection that never began HTTP/2 holds a socket for nothing: closed, as grpc core does."""
        if not self.preface and not self.closing:
            log.info(
                "closing a gRPC connection from %s that sent no HTTP/2 preface in %.0f s",
                self.client,
                HANDSHAKE_TIMEOUT_S,
            )
            self._close_quietly()

    def _close_quietly(self) -> None:
        self.closing = True
        self.transport.close()

    def goaway(self) -> None:
        """Stop taking calls (server shutdown): those open finish, new ones are refused."""
        self._greet()  # SETTINGS come first, even to a client whose preface has not arrived
        self._write(w.goaway(self.last_stream, w.NO_ERROR))

    def _maybe_idle(self) -> None:
        if not self.calls and self.server.stopping:
            self.server.idle.set()


class H2GrpcServer:
    """Listens, accepts connections, and stops gracefully: GOAWAY, open calls finish, then close."""

    def __init__(
        self,
        methods: dict[bytes, tuple[Handler, Any]],
        max_message_bytes: int,
        read_timeout_s: float = READ_TIMEOUT_S,
        budget: BodyBudget | None = None,
        send_timeout_s: float = SEND_TIMEOUT_S,
        streams: dict[bytes, tuple[Any, Any]] | None = None,
        balancer: Any = None,
    ) -> None:
        self.methods = methods
        self.streams = streams or {}  # bidirectional streaming methods (h2_streams): (handler, request class)
        self.max_message_bytes = max_message_bytes
        self.read_timeout_s = read_timeout_s  # h2_watch: how long a call's DATA may pause
        self.send_timeout_s = send_timeout_s  # send_watch: how long a client may leave answers unread
        self.budget = budget  # the request bytes the process may hold (shared with HTTP)
        self.loop = asyncio.get_running_loop()
        # a worker's connections are counted on the workers' board (serving/handoff.py), and each one
        # accepted goes to the worker holding fewest
        self.balancer = balancer
        self.connections: set[Connection] = balancer.counted("grpc") if balancer is not None else set()
        self.stopping = False
        self.idle = asyncio.Event()
        self.listener: asyncio.Server | None = None

    async def listen(self, host: str, port: int, reuse_port: bool) -> int:
        factory: Any = lambda: Connection(self)  # noqa: E731
        if self.balancer is not None:
            factory = self.balancer.arrivals("grpc", factory)
        self.listener = await self.loop.create_server(
            factory, host, port, reuse_port=reuse_port or None, backlog=1024
        )
        return self.listener.sockets[0].getsockname()[1]

    async def stop(self, grace_s: float = 5.0) -> None:
        self.stopping = True
        if self.listener is not None:
            self.listener.close()
        for connection in list(self.connections):
            connection.goaway()
            connection.end_idle_streams()
        loop_end = self.loop.time() + grace_s
        while any(c.calls for c in self.connections) and (left := loop_end - self.loop.time()) > 0:
            self.idle.clear()
            try:
                await asyncio.wait_for(self.idle.wait(), left)
            except TimeoutError:
                break
        for connection in list(self.connections):
            connection._flush()
            connection.transport.close()


def keep_alive(sock: Any) -> None:
    """Turn on TCP keepalive probes on a connection's socket (``KEEPALIVE_*``; the options this system
    lacks are skipped): a peer that vanished is then found and its connection closed."""
    if sock is None:  # an in-memory transport (tests)
        return
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), KEEPALIVE_IDLE_S),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), KEEPALIVE_INTERVAL_S),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), KEEPALIVE_PROBES),
    ]
    for level, name, value in options:
        if name is not None:
            with contextlib.suppress(OSError):  # a socket closed meanwhile, or not TCP
                sock.setsockopt(level, name, value)
