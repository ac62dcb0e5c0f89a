"""The state and the steps of a Kiln HTTP/2 gRPC connection that its mixins share, declared once.

:class:`serving.protocol.grpc_h2.Connection` sets the state in ``__init__`` and is made of mixins, each
a part of the connection's work: :class:`~serving.protocol.h2_requests.RequestFrames` (the frames that
carry requests in), :class:`~serving.protocol.h2_control.ControlFrames` (the control frames),
:class:`~serving.protocol.h2_watch.PartialCalls` (calls still arriving) and
:class:`~serving.protocol.h2_calls.Calls` (calls answered and ended). They read and change this state
and call each other's steps; :class:`ConnectionState` names both for all of them (annotations only:
nothing here is set or run).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from serving.protocol.grpc_call import Call
from serving.protocol.h2_wire import HeaderDecoder


class ConnectionState:
    """What every part of a connection may read, change or call (set in ``Connection.__init__``)."""

    server: Any  # the H2GrpcServer: its methods, limits and body budget
    client: str  # the client's address (host:port) as the connection's log lines name it
    loop: asyncio.AbstractEventLoop
    closing: bool
    calls: dict[int, Call]  # by stream: the calls open
    partial: dict[int, Call]  # those whose client has not ended its half yet
    expiries: list[tuple[float, int]]  # h2_watch's heap of (when, stream) of the calls in ``partial``
    fresh: list[Call]  # the calls the current read opened half-sent (h2_watch's, after the read)
    blocked: dict[int, Call]  # those whose answer waits for the connection's window, in order
    parked: dict[int, Call]  # those whose answer waits for the call's own window
    last_stream: int
    closed_streams: Any  # h2_requests.ClosedStreams: the streams closed lately, and how
    content_lengths: dict[int, int]  # by stream: the DATA bytes still due where a call declared a length
    decoder: HeaderDecoder  # the connection's HPACK decoder: every header block goes through it
    unacked: int  # DATA bytes received on the connection and not yet granted back (WINDOW_UPDATE)
    block_bytes: int  # the open header block's bytes, its frames' heads counted
    send_window: int
    peer_window: int  # the client's SETTINGS_INITIAL_WINDOW_SIZE
    peer_frame: int
    table_update: bytes  # an HPACK size update owed at the start of the next header block
    reset_budget: float
    reset_at: float
    window_budget: float
    window_at: float
    watch: asyncio.TimerHandle | None
    window_watch: asyncio.TimerHandle | None  # h2_calls': armed while answers wait for window
    data_sent: int  # DATA bytes sent from waiting answers (h2_calls' _pump), the window watch's progress
    large_out: bool  # what the step writes may hold a piece to write as it is, not joined (_flush)
    window_mark: int  # ``data_sent`` when the window watch was armed
    reading_paused: bool
    preface: bool  # the client's HTTP/2 preface has arrived
    buffer: bytearray  # the start of a frame not yet whole
    reserved: int  # the body budget held for the DATA frame in ``buffer``
    skip: int  # bytes still to drop of a DATA frame nobody will read
    continuing: tuple[int, int, list[bytes]] | None  # a header block still arriving: stream, flags, parts
    frame_read: float | None  # h2_watch's: the last read into a frame not yet whole
    block_began: float | None  # h2_watch's: when the header block not yet whole began
    # the steps, wherever they are defined
    _write: Callable[[bytes], None]
    _pump: Callable[[], None]
    _wait: Callable[[Call], None]
    _park: Callable[[Call], None]
    _finish: Callable[[Call, int, str], None]
    _end_stream: Callable[[Any, int, str], None]
    _watch_deadline: Callable[[Call], bool]
    _close_call: Callable[[Call], None]
    _block: Callable[[bytes], bytes]
    _reset: Callable[[Call, int], None]
    _release: Callable[[Call], None]
    _spend_reset: Callable[[], None]
    _maybe_idle: Callable[[], None]
    _flush: Callable[[], None]
    _received: Callable[[int], None]
    _close_quietly: Callable[[], None]
    _abort: Callable[[], None]
    _dispatch: Callable[[Call], None]
    _open_stream: Callable[[Any, bool], None]
    _headers_only: Callable[[int, bytes, bool], None]
    _refuse_stream: Callable[[int, int], None]
    _trailers_only: Callable[[int, str, tuple[tuple[str, str], ...]], bytes]
