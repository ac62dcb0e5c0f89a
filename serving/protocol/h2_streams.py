"""Bidirectional streaming calls on Kiln's HTTP/2 server (:mod:`grpc_h2`): Triton's ``ModelStreamInfer``,
which perf_analyzer ``--streaming`` and tritonclient's ``start_stream``/``async_stream_infer`` send.

A unary call is dispatched once its client has ended its half of the stream. A streaming call starts
its servicer when its headers arrive: each message is handed to the servicer's request iterator as
soon as its last byte arrives (several in one DATA frame, or one across many), and each response the
servicer yields leaves as a message of its own within the flow-control windows, behind the response
headers sent with the first. The call ends when the servicer returns (trailers after the last queued
message), fails (its status in the trailers), passes its deadline, or is reset.

What a stream holds is bounded as a unary call's is: the bytes of messages not yet answered count in
the body budget (a message's inflated size once inflated, and its queue entry's), given back one
message at a time as each answer leaves (``ModelStreamInfer`` answers each request once; an answer
waiting for the client's window keeps its request held) and all at the call's end; a message over
the limit ends the call RESOURCE_EXHAUSTED, past the budget UNAVAILABLE. A client sending faster than
its servicer takes the messages gets no more window while those waiting hold ``BACKLOG_BYTES`` (the
servicer takes up to its own bound, ``STREAM_IN_FLIGHT``, at once). Pauses between messages are
the client's to take (a stream may idle, as grpc core allows); a message begun pauses no longer than a
unary call's request may (the read timeout: DEADLINE_EXCEEDED, :mod:`h2_watch`), and the deadline,
when sent, holds. When
the server stops, a stream with nothing in flight ends at once, UNAVAILABLE, and one with requests in
flight after their answers (:meth:`StreamCalls.end_idle_streams`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from serving.protocol import h2_wire as w
from serving.protocol.grpc_call import (
    RESPONSE_HEADERS,
    TOO_LARGE_INFLATED,
    Aborted,
    Call,
    Outgoing,
    Pieces,
    decompress,
    decompress_small,
    too_large,
    trailers_block,
)
from serving.protocol.h2_state import ConnectionState
from serving.protocol.limits import BodyBudget

log = logging.getLogger("serving.protocol.grpc_h2")  # the server's log, whichever part writes it

_RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
CUT_MESSAGE = "the client ended the stream inside a message"
SHUTTING_DOWN = "the server is shutting down: open the stream again (elsewhere)"
_ENDED = object()  # the client's half is over: the request iterator stops here
# what each message waiting in a stream's inbox holds besides its bytes (its queue entry and its bytes
# object's head: 64 bytes measured for an empty message, ~97 for one of a byte), counted in the body
# budget with them: a stream of empty 5-byte messages held ~13 times the bytes the budget counted, so
# a 1 GiB budget let one client's messages hold ~13 GiB
QUEUED_MESSAGE_BYTES = 96
BACKLOG_BYTES = 1 << 22  # a stream's messages waiting for its servicer past which its window is withheld


class StreamCall(Call):
    """A streaming call: its messages in as they complete, its responses out as they are yielded."""

    __slots__ = ("inbox", "incoming", "unanswered", "owed", "headers_sent", "queued", "taken")

    streaming = True

    def __init__(self, stream: int, handler: Any, request_class: Any, send_window: int, loop: Any) -> None:
        super().__init__(stream, handler, request_class, send_window, loop)
        self.inbox: asyncio.Queue = asyncio.Queue()  # (compressed, message) pairs, then _ENDED or Aborted
        self.incoming = bytearray()  # the start of the next message
        self.unanswered: deque[int] = deque()  # the budget each message handed over holds till answered
        self.owed = 0  # answers yielded but still waiting for the client's window (their requests held)
        self.headers_sent = False
        # the bytes of the messages in ``inbox`` its servicer has not taken yet: past BACKLOG_BYTES the
        # client is granted no more window (h2_requests), and ``taken`` (the connection's, set when the
        # stream opens) grants what was withheld as the servicer takes them, as grpc core's flow control
        # holds a client to the pace its server reads at (granted regardless, a client streaming faster
        # than its model filled the process's body budget in a second or two: its stream, and every
        # other request, refused)
        self.queued = 0
        self.taken: Any = None
        # answers yielded while others wait for window go behind them in ``pending``, each as it is
        # (joining each to the bytes before it copied them all again: N answers waiting for a
        # client's window cost the loop N² bytes)
        self.trailers = None  # set when the servicer is done: what _pump sends after the last message

    def feed(self, payload: bytes, max_bytes: int, budget: BodyBudget | None) -> tuple[int, str] | None:
        """Take a DATA payload; each message it completes goes to the request iterator. The status and
        details to end the call with where a message declares more than ``max_bytes`` or the bytes do
        not fit the budget."""
        if budget is not None:
            if not budget.take(len(payload)):
                return _UNAVAILABLE, budget.refusal().message
            self.held += len(payload)
        incoming = self.incoming
        incoming += payload
        at, whole = 0, []
        while len(incoming) - at >= 5:
            declared = int.from_bytes(incoming[at + 1 : at + 5], "big")
            if declared > max_bytes:
                return _RESOURCE_EXHAUSTED, too_large(declared, max_bytes)
            end = at + 5 + declared
            if end > len(incoming):
                break
            whole.append((incoming[at] != 0, bytes(incoming[at + 5 : end])))
            at = end
        if at:
            del incoming[:at]
        if budget is not None and whole:
            if not budget.take(len(whole) * QUEUED_MESSAGE_BYTES):
                return _UNAVAILABLE, budget.refusal().message
            self.held += len(whole) * QUEUED_MESSAGE_BYTES
        for item in whole:
            self.queued += len(item[1]) + 5
            self.inbox.put_nowait(item)
        return None

    def end_requests(self) -> None:
        """The client ended its half: the iterator stops after the messages before it (or fails, where
        the stream ended inside one, as grpc core fails such a call)."""
        self.ended = True
        self.inbox.put_nowait(Aborted(grpc.StatusCode.INTERNAL, CUT_MESSAGE) if self.incoming else _ENDED)

    async def requests(self, max_bytes: int, budget: BodyBudget | None) -> AsyncIterator[Any]:
        """The servicer's request iterator: each message parsed (inflated first where compressed, in a
        thread where it inflates past what the loop should hold), in the order they arrived."""
        while (item := await self.inbox.get()) is not _ENDED:
            if isinstance(item, Aborted):
                raise item
            compressed, message = item
            size = len(message) + 5
            self.queued -= size
            if self.taken is not None:
                self.taken(self)
            if compressed:
                plain = decompress_small(self.encoding, message)
                if plain is None:
                    plain = await asyncio.to_thread(decompress, self.encoding, message, max_bytes)
                elif len(plain) > max_bytes:
                    raise Aborted(grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_LARGE_INFLATED)
                # held at its inflated size from now on, unless the call has ended meanwhile (reset in the
                # read that brought this message, say): its bytes were given back, and these would never be
                if budget is not None and len(plain) > size and not self.released:
                    if not budget.take(len(plain) - size):
                        raise Aborted(grpc.StatusCode.UNAVAILABLE, budget.refusal().message)
                    self.held += len(plain) - size
                    size = len(plain)
                message = plain
            try:
                request = self.request_class.FromString(message)
            except DecodeError:
                raise Aborted(grpc.StatusCode.INTERNAL, "cannot parse the request message") from None
            self.unanswered.append(size + QUEUED_MESSAGE_BYTES if budget is not None else 0)
            yield request

    def backlogged(self) -> bool:
        """Whether the messages waiting for its servicer hold enough that its client gets no more window."""
        return self.queued >= BACKLOG_BYTES

    def answered(self, budget: BodyBudget | None, count: int = 1) -> None:
        """``count`` answers have left: the oldest requests' bytes go back to the budget."""
        for _ in range(count):
            self._give_oldest(budget)

    def _give_oldest(self, budget: BodyBudget | None) -> None:
        if self.unanswered:
            size = min(self.unanswered.popleft(), self.held)  # none once the call has given all back
            if size and budget is not None:
                budget.give(size)
                self.held -= size

    def idle(self) -> bool:
        """Whether no request of this stream waits for its answer (none arriving, queued or served)."""
        return not self.incoming and self.inbox.empty() and len(self.unanswered) == self.owed

    def holds_message(self) -> bool:
        return False  # a frame still arriving is held as it comes (h2_watch), not as a whole message

    def refused(
        self, payload: bytes, code: int, details: str, message: bytes | None = None
    ) -> tuple[int, str]:
        """A refusal ends the stream; no model is told (a frame's bytes need not start a message)."""
        return code, details


class StreamCalls(ConnectionState):
    """A mixin of :class:`grpc_h2.Connection`: serve, answer and end its streaming calls."""

    def _open_stream(self, call: StreamCall, ended: bool) -> None:
        """Headers of a streaming call arrived: its servicer starts now, messages follow as they come."""
        self.calls[call.stream] = call
        if call.deadline is not None and not self._watch_deadline(call):
            return
        if ended:
            call.end_requests()
        call.task = self.loop.create_task(self._serve_stream(call))

    async def _serve_stream(self, call: StreamCall) -> None:
        budget = self.server.budget
        responses = call.handler(call.requests(self.server.max_message_bytes, budget), call)
        try:
            async for response in responses:
                if isinstance(response, Pieces):
                    self._send_pieces(call, response.pieces())
                else:
                    self._send_message(call, response.SerializeToString())
                if call.pending:  # its request stays held until it has left (a client not reading
                    call.owed += 1  # its answers cannot make the server hold them without bound)
                else:
                    call.answered(budget)
                if self.server.stopping and call.idle():  # the server stops: its last answer given
                    self._finish(call, _UNAVAILABLE, SHUTTING_DOWN)
                    return
        except Aborted as stop:
            self._finish(call, stop.code.value[0], stop.details)
        except asyncio.CancelledError:
            return  # the client reset the call or went away: nobody to answer
        except Exception as error:  # a servicer bug: UNKNOWN as grpcio answers, the connection serves on
            log.exception("gRPC stream %d failed", call.stream)
            self._finish(call, grpc.StatusCode.UNKNOWN.value[0], f"Unexpected error: {type(error).__name__}")
        else:
            self._finish(call, 0, "")
        finally:
            await responses.aclose()  # its own tasks stop (the servicer's finally), however it ended

    def end_idle_streams(self) -> None:
        """The server stops: each stream with no request in flight ends now (UNAVAILABLE, so its client
        retries elsewhere), the others once their last answer is given, instead of holding the stop
        for its whole grace while their clients idle."""
        for call in list(self.calls.values()):
            if call.streaming and call.idle():
                self._finish(call, _UNAVAILABLE, SHUTTING_DOWN)

    def _send_message(self, call: StreamCall, data: bytes) -> None:
        """One response message: written now where nothing waits before it and the windows allow,
        else queued behind the call's waiting bytes (and the connection's waiting calls)."""
        if self.calls.get(call.stream) is not call:
            return  # reset meanwhile
        stream = call.stream
        self._stream_headers(call)
        message = b"\x00" + len(data).to_bytes(4, "big") + data
        size = len(message)
        if (
            not call.pending
            and not self.blocked
            and size <= min(self.send_window, call.send_window, self.peer_frame)
        ):
            self.send_window -= size
            call.send_window -= size
            self._write(w.frame(w.DATA, 0, stream, message))
            return
        self._send_later(call, (message,))

    def _send_pieces(self, call: StreamCall, pieces: list[bytes | memoryview]) -> None:
        """One response message handed over in pieces: written as they are, as the windows allow."""
        if self.calls.get(call.stream) is not call:
            return  # reset meanwhile
        self._stream_headers(call)
        self._send_later(call, (b"\x00" + sum(map(len, pieces)).to_bytes(4, "big"), *pieces))

    def _stream_headers(self, call: StreamCall) -> None:
        if not call.headers_sent:
            call.headers_sent = True
            self._write(w.frame(w.HEADERS, w.END_HEADERS, call.stream, self._block(RESPONSE_HEADERS)))

    def _send_later(self, call: StreamCall, message: tuple[bytes | memoryview, ...]) -> None:
        """``message`` behind what the call has waiting (it waits in blocked or parked already), or
        waiting now, sent as the windows allow (h2_calls.Calls._pump)."""
        if call.pending:
            call.pending.extend(message)
            return
        call.pending = Outgoing(message)
        if call.stream not in self.blocked and call.stream not in self.parked:
            self._wait(call)
        self._pump()

    def _end_stream(self, call: StreamCall, code: int, details: str) -> None:
        """End a streaming call whose response headers have left: trailers after its queued messages."""
        trailers = trailers_block(code, details, call.trailing)
        if call.pending:
            call.trailers = trailers  # _pump sends them once the messages before them have left
            return
        self.blocked.pop(call.stream, None)
        self.parked.pop(call.stream, None)
        self._write(w.frame(w.HEADERS, w.END_HEADERS | w.END_STREAM, call.stream, self._block(trailers)))
        self._close_call(call)
