"""A gRPC call's life after its request has arrived, for Kiln's HTTP/2 server (:mod:`grpc_h2`): its
message parsed (inflated in a thread if it inflates past ``LOOP_INFLATE_BYTES``, and held in the body
budget at its inflated size) and handed to the servicer, its answer sent within the client's
flow-control windows (in turns where they are short), and its end: a status, a stream reset, the bytes
it held given back.

A call whose client sent a deadline (``grpc-timeout``) is held to it until its answer has left, as
grpc core's servers hold it: past it the servicer's task is cancelled (a request waiting in a batcher
leaves its queue) and the client told DEADLINE_EXCEEDED, or, once its answer has begun, the stream
reset. Before dispatch :mod:`h2_watch` holds it to its deadline; the backends also get the time left
(``time_remaining``) to bound their own work.

:class:`Calls` is a mixin of :class:`serving.protocol.grpc_h2.Connection`, as the control frames
(:mod:`h2_control`) and the read watch (:mod:`h2_watch`) are: it reads and changes the connection's
state and writes through the connection's writer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from serving.protocol import h2_wire as w
from serving.protocol.grpc_call import (
    HEAD_BYTES,
    RESPONSE_HEADERS,
    TOO_LARGE_INFLATED,
    Aborted,
    Call,
    Outgoing,
    Pieces,
    decompress,
    decompress_small,
    trailers_block,
)
from serving.protocol.h2_state import ConnectionState
from serving.protocol.h2_watch import DEADLINE_EXCEEDED
from serving.protocol.http1_writes import JOIN_BYTES
from serving.protocol.limits import NoBudget, held_from_a_thread

log = logging.getLogger("serving.protocol.grpc_h2")  # the server's log, whichever part writes it

INTERNAL = grpc.StatusCode.INTERNAL.value[0]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
DEADLINE_DETAILS = "Deadline Exceeded"  # grpc core's words


def _inflated_request(
    request_class: Any,
    encoding: bytes | None,
    message: bytes,
    max_bytes: int,
    grow: Callable[[int], bool] | None = None,
) -> tuple[Any, int]:
    """A compressed request message inflated and parsed, and the size it inflated to (in a thread: see
    ``Calls._inflate_and_serve``)."""
    plain = decompress(encoding, message, max_bytes, grow)
    return request_class.FromString(plain), len(plain)


class Calls(ConnectionState):
    """Dispatch, answer and end the calls of a connection."""

    def _dispatch(self, call: Call) -> None:
        """Parse the call's one message and start the servicer on it."""
        self.partial.pop(call.stream, None)
        if call.deadline is not None and not self._watch_deadline(call):
            return
        problem = call.unfinished()
        if problem is not None:
            self._finish(call, INTERNAL, problem)
            return
        message = call.message()
        try:
            if call.compressed:
                plain = decompress_small(call.encoding, message)
                if plain is None:  # it inflates to more than the loop should hold for
                    call.task = self.loop.create_task(self._inflate_and_serve(call, message))
                    return
                if len(plain) > self.server.max_message_bytes:  # a limit under the loop's inflation
                    raise Aborted(grpc.StatusCode.RESOURCE_EXHAUSTED, TOO_LARGE_INFLATED)
                if not self._hold_inflated(call, len(plain), message):
                    return
                message = plain
            request = call.request_class.FromString(message)  # a large one: from its buffer, uncopied
        except (Aborted, DecodeError) as error:
            self._refuse(call, error, message)
            return
        call.request = request  # until _serve starts: a call ended before then is told (_release)
        call.task = self.loop.create_task(self._serve(call, request))

    async def _inflate_and_serve(self, call: Call, message: bytes) -> None:
        """A compressed message too large to inflate on the event loop: inflated and parsed in a thread
        (a reset or the deadline cancels the wait; the thread's work, bounded by the limit, runs out)."""
        size, budget = self.server.max_message_bytes, self.server.budget
        # its output held as it grows (not once whole: many such calls at once would each build theirs),
        # while the call is open: one reset, timed out or cut off meanwhile has given its bytes back, and
        # the thread, which runs on, took more that nobody gave back (the budget shrank for good); a no
        # stops the thread's work instead
        grow = None if budget is None else held_from_a_thread(lambda n: self._holds(call, n, budget))
        try:
            request, inflated = await asyncio.to_thread(
                _inflated_request, call.request_class, call.encoding, message, size, grow
            )
        except (Aborted, DecodeError) as error:
            self._refuse(call, error, message)
            return
        except NoBudget:
            refusal = budget.refusal().message  # type: ignore[union-attr]
            self._finish(call, *call.refused(b"", UNAVAILABLE, refusal, message))
            return
        head = message[:HEAD_BYTES]  # what tells its model, should it be refused below
        del message  # the compressed bytes: no longer held while the call is served
        if budget is not None:
            call.trim(inflated, budget)  # what was held ahead of the output, given back
        if self._hold_inflated(call, inflated, head):
            await self._serve(call, request)

    def _holds(self, call: Call, size: int, budget: Any) -> bool:
        """Hold ``size`` bytes for ``call`` if it is still open (False where it has ended or they do not fit)."""
        return self.calls.get(call.stream) is call and call.hold(size, budget)

    def _hold_inflated(self, call: Call, size: int, sent: bytes) -> bool:
        """Hold what ``call``'s message inflated to in the body budget while it is served (its
        compressed bytes, dropped by then, counted in); False, and the call ended UNAVAILABLE as a
        message that large sent plain would be (and counted for the model ``sent``, its start as
        sent, names), where it does not fit."""
        budget = self.server.budget
        if budget is None or call.hold(size, budget):
            return True
        self._finish(call, *call.refused(b"", UNAVAILABLE, budget.refusal().message, sent))
        return False

    def _refuse(self, call: Call, error: Aborted | DecodeError, sent: bytes) -> None:
        """End ``call`` whose request message cannot be served: with the status an inflation aborted
        with (counted for the model ``sent``, the message as sent, names, as a refusal unparsed), or
        INTERNAL for a message that does not parse (grpc core's answer to both)."""
        if isinstance(error, Aborted):
            self._finish(call, *call.refused(b"", error.code.value[0], error.details, sent))
        else:
            self._finish(call, INTERNAL, "cannot parse the request message")

    def _watch_deadline(self, call: Call) -> bool:
        """Arm the timer that ends ``call`` at its deadline; False (and the call ended) if it has passed."""
        if call.deadline <= self.loop.time():  # its message completed late: counted as one cut by it
            self._finish(call, *call.refused(b"", DEADLINE_EXCEEDED, DEADLINE_DETAILS))
            return False
        call.timer = self.loop.call_at(call.deadline, self._deadline_passed, call)
        return True

    def _deadline_passed(self, call: Call) -> None:
        """``call``'s deadline came before its answer left: its work is cancelled and the client told
        (DEADLINE_EXCEEDED; or, its answer begun, the stream reset, as a cut message is no answer)."""
        call.timer = None
        if self.calls.get(call.stream) is not call:
            return
        if call.task is not None:
            call.task.cancel()
        if not call.pending:  # nothing of a message begun (a stream's earlier messages may have left)
            self._finish(call, DEADLINE_EXCEEDED, DEADLINE_DETAILS)
            return
        self.blocked.pop(call.stream, None)
        self.parked.pop(call.stream, None)
        call.pending = None
        self._write(w.rst_stream(call.stream, w.CANCEL))
        self._close_call(call)

    async def _serve(self, call: Call, request: Any) -> None:
        call.request = None  # its servicer has it now
        try:
            response = await call.handler(request, call)
        except Aborted as stop:
            self._finish(call, stop.code.value[0], stop.details)
        except asyncio.CancelledError:
            return  # the client reset the call or went away: nobody to answer
        except Exception as error:  # a servicer bug: answer UNKNOWN as grpcio does, keep serving
            log.exception("gRPC call on stream %d failed", call.stream)
            self._finish(call, grpc.StatusCode.UNKNOWN.value[0], f"Unexpected error: {type(error).__name__}")
        else:
            if isinstance(response, Pieces):
                self._answer_pieces(call, response.pieces())
            else:
                self._answer(call, response.SerializeToString())

    def _answer(self, call: Call, data: bytes) -> None:
        """Headers, the message and the trailers: one write when the windows allow, else in turns."""
        if self.calls.get(call.stream) is not call:
            return  # reset meanwhile
        size = len(data) + 5
        message = b"\x00" + len(data).to_bytes(4, "big")  # not compressed, then the length
        stream = call.stream
        headers = w.frame(w.HEADERS, w.END_HEADERS, stream, self._block(RESPONSE_HEADERS))
        trailers = trailers_block(0, "", call.trailing)
        if size <= min(self.send_window, call.send_window, self.peer_frame) and not self.blocked:
            self.send_window -= size
            self._write(
                headers
                + w.frame(w.DATA, 0, stream, message + data)
                + w.frame(w.HEADERS, w.END_HEADERS | w.END_STREAM, stream, self._block(trailers))
            )
            self._close_call(call)
            return
        self._write(headers)
        self._answer_later(call, Outgoing((message + data,)), trailers)

    def _answer_pieces(self, call: Call, pieces: list[bytes | memoryview]) -> None:
        """Headers, a message handed over in pieces and the trailers, the pieces written as they are
        (a frame's worth at a time, within the windows: :meth:`_pump`)."""
        if self.calls.get(call.stream) is not call:
            return  # reset meanwhile
        size = sum(map(len, pieces))
        self._write(w.frame(w.HEADERS, w.END_HEADERS, call.stream, self._block(RESPONSE_HEADERS)))
        message = Outgoing((b"\x00" + size.to_bytes(4, "big"), *pieces))
        self._answer_later(call, message, trailers_block(0, "", call.trailing))

    def _answer_later(self, call: Call, message: Outgoing, trailers: bytes) -> None:
        """``message`` leaves as the windows allow, then ``trailers`` (:meth:`_pump`)."""
        call.pending = message
        call.trailers = trailers
        self._wait(call)
        self._pump()

    def _wait(self, call: Call) -> None:
        """``call``'s answer waits: for the connection's window where it has window of its own, else parked."""
        if call.send_window > 0:
            self.blocked[call.stream] = call
        else:
            self._park(call)

    def _park(self, call: Call) -> None:
        """``call``'s answer waits for its own window, from now: the window watch resets it once it has
        waited so for the send timeout (:meth:`_check_window`)."""
        call.parked_at = self.loop.time()
        self.parked[call.stream] = call

    def _pump(self) -> None:
        """Send what waiting messages the windows now allow, in the order they waited.

        Only calls with window of their own wait here (the others are parked until the client grants
        them some), so each turn of the loop sends bytes or ends: a client granting window a byte at a
        time costs a step, not a walk over every waiting call (which made 13 bytes of WINDOW_UPDATE
        cost ~165 µs of the loop with 1 000 answers waiting)."""
        blocked = self.blocked
        while blocked and self.send_window > 0:
            stream = next(iter(blocked))
            call = blocked[stream]
            pending = call.pending
            while pending and self.send_window > 0 and call.send_window > 0:
                size = min(len(pending), self.send_window, call.send_window, self.peer_frame)
                self._write(w.frame_head(w.DATA, 0, stream, size))
                for piece in pending.take(size):  # views of the answer: joined at the flush if small
                    self._write(piece)
                self.large_out = self.large_out or size >= JOIN_BYTES
                self.send_window -= size
                call.send_window -= size
                self.data_sent += size
            if pending:
                if call.send_window <= 0:
                    del blocked[stream]
                    self._park(call)
                continue
            del blocked[stream]
            if call.trailers is None:  # a stream whose servicer goes on: its next message may follow
                call.pending = None
                call.answered(self.server.budget, call.owed)  # the requests of the answers that left
                call.owed = 0
                continue
            self._write(w.frame(w.HEADERS, w.END_HEADERS | w.END_STREAM, stream, self._block(call.trailers)))
            self._close_call(call)
        if not (blocked or self.parked):
            if self.window_watch is not None:  # every answer has left: the watch stands down
                self.window_watch.cancel()
                self.window_watch = None
        elif self.window_watch is None:
            self.window_mark = self.data_sent
            self.window_watch = self.loop.call_later(self.server.send_timeout_s, self._check_window)

    def _check_window(self) -> None:
        """The send timeout for answers that wait for flow-control window rather than for the socket
        (:mod:`send_watch`): a client that grants none (SETTINGS_INITIAL_WINDOW_SIZE 0, no
        WINDOW_UPDATE) never fills the socket's buffers, and its answers, with their requests' bytes in
        the body budget, waited for ever. Answers waiting for the connection's window while it sent no
        byte for the timeout abort the connection (it is stalled as a whole). A call whose answer has
        waited for its own call's window for the timeout is reset (CANCEL), that call alone, whatever
        the others do: aborting the connection for one stalled stream (a streaming client not reading
        one stream) cut every other call on it, in flight or answering; and counted from when that call
        began to wait, as a connection sending nothing reset too one that had waited a moment, and one
        sending another answer kept it for good. Answers whose client grants window, however little,
        are kept."""
        self.window_watch = None
        if not (self.blocked or self.parked) or self.closing:
            return
        if self.blocked and self.data_sent == self.window_mark:
            log.info(
                "closing a gRPC connection from %s: it granted no window to its %d waiting answers in %g s",
                self.client,
                len(self.blocked) + len(self.parked),
                self.server.send_timeout_s,
            )
            self._abort()
            return
        timeout, now = self.server.send_timeout_s, self.loop.time()
        stalled = [call for call in self.parked.values() if call.parked_at + timeout <= now]
        if stalled:
            log.info(
                "resetting %d gRPC call(s) from %s: it granted their answers no window in %g s",
                len(stalled),
                self.client,
                timeout,
            )
        for call in stalled:
            self._reset(call, w.CANCEL, spend=False)  # the server's timeout, not the client's reset
        if self.blocked or self.parked:
            self.window_mark = self.data_sent
            self.window_watch = self.loop.call_later(timeout, self._check_window)

    def _finish(self, call: Call, code: int, details: str) -> None:
        """End a call with a status and no message (gRPC's trailers-only answer), or a stream whose
        messages have begun with its trailers after them."""
        if self.calls.get(call.stream) is not call:
            return
        if call.streaming:
            if call.task is not None and call.task is not asyncio.current_task(self.loop):
                call.task.cancel()  # ended from outside its servicer (a refused message, the deadline)
            if call.headers_sent:
                self._end_stream(call, code, details)
                return
        self._headers_only(call.stream, self._trailers_only(code, details, call.trailing), True)
        self._close_call(call)

    def _trailers_only(self, code: int, details: str, trailing: tuple[tuple[str, str], ...]) -> bytes:
        return RESPONSE_HEADERS + trailers_block(code, details, trailing)

    def _headers_only(self, stream: int, block: bytes, ended: bool) -> None:
        self._write(w.frame(w.HEADERS, w.END_HEADERS | w.END_STREAM, stream, self._block(block)))
        if not ended:  # answered before the client finished sending: tell it to stop
            self._write(w.rst_stream(stream, w.NO_ERROR))
        self.closed_streams.note(stream, not ended)  # its late frames dropped where it was not

    def _reset(self, call: Call, code: int, spend: bool = True) -> None:
        """A stream error: that call ends with RST_STREAM ``code`` and the connection serves on
        (``spend``: counted as a reset the client made the server make)."""
        if spend:
            self._spend_reset()
        del self.calls[call.stream]
        self.partial.pop(call.stream, None)
        self._release(call)
        self.blocked.pop(call.stream, None)
        self.parked.pop(call.stream, None)
        if call.task is not None:
            call.task.cancel()
        self._write(w.rst_stream(call.stream, code))
        self.closed_streams.note(call.stream, True)  # the client may have sent more: dropped
        self._maybe_idle()

    def _close_call(self, call: Call) -> None:
        del self.calls[call.stream]
        self.partial.pop(call.stream, None)
        self._release(call)
        if not call.ended:
            self._write(w.rst_stream(call.stream, w.NO_ERROR))
        self.closed_streams.note(call.stream, not call.ended)
        self._maybe_idle()

    def _release(self, call: Call) -> None:
        """The call ended: its request bytes go back to the budget, its deadline's timer stops."""
        call.released = True
        if call.request is not None:  # ended before its servicer started: it never will, and is told
            if call.task is not None:
                call.task.cancel()
            call.unserved(None if call.deadline is None else call.deadline - self.loop.time())
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        if call.held:
            self.server.budget.give(call.held)
            call.held = 0
        if self.content_lengths:
            self.content_lengths.pop(call.stream, None)

    def _block(self, block: bytes) -> bytes:
        if self.table_update:
            block, self.table_update = self.table_update + block, b""
        return block
