"""Request body limits: 413 above a byte limit (before buffering), 503 while the bodies the gateway
holds already fill its memory budget, compressed bodies inflated within both, JSON that cannot hurt
the parser, and JSON integers read as the published schema reads them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import logging
import zlib
from collections.abc import Callable
from typing import Any

from serving.errors import BadRequest, PayloadTooLarge, Unavailable, UnsupportedMediaType
from serving.protocol.request_values import stated_size

log = logging.getLogger(__name__)

BODY_HOLD = "kiln.body_hold"  # scope key: the request's BodyHold, where the gateway has a budget
# What a compressed body (HTTP) or message (gRPC) may inflate to on the event loop (1-8 ms a MiB here,
# by how well it compressed); a larger one (64 MiB, KILN_MAX_BODY_BYTES' default: 0.2-0.55 s) inflates
# in a thread, where zlib lets go of the GIL, so the worker's other requests are answered meanwhile.
LOOP_INFLATE_BYTES = 1 << 20
INFLATE_STEP = 1 << 20  # what a body inflates by at a time (class Inflated)
HOLD_AHEAD = INFLATE_STEP  # what an inflation in a thread holds of the body budget ahead of its output
HOLD_WAIT_S = 10.0  # an inflation thread's longest wait for the event loop to hold more (then it stops)
GZIP_MAGIC = b"\x1f\x8b"  # the first two bytes of every gzip member (RFC 1952)
# The Content-Encodings an HTTP body may have (tritonclient's request_compression_algorithm), with the
# zlib window that reads each; x-gzip is gzip (RFC 9110 8.4.1.3). Names are case-insensitive.
CONTENT_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
CONTENT_ENCODING_PARAMETER = {  # the header as a route's OpenAPI operation documents it
    "name": "Content-Encoding",
    "in": "header",
    "required": False,
    "description": "the body's compression, inflated within the body limit (empty: none, as identity)",
    "schema": {"type": "string", "enum": ["gzip", "deflate", "identity", ""]},
}


class BodyBudget:
    """The bytes of request bodies one gateway process may hold at once, over all its connections and
    both protocols (``KILN_MAX_INFLIGHT_BODY_BYTES``): a body is counted from its first byte (or its
    declared Content-Length) until its request is answered. Each body is bounded by
    ``KILN_MAX_BODY_BYTES``, but their number was not: many clients sending large bodies at once could
    exhaust the process's memory and take every request down with it. Past the budget, a request is
    refused (HTTP 503 with Retry-After, gRPC UNAVAILABLE) and the rest are served, as grpc core's
    resource quota does. Used on the event loop only."""

    __slots__ = ("limit", "retry_after", "used", "exhausted")

    def __init__(self, limit: int, retry_after: float = 1.0) -> None:
        self.limit, self.retry_after = limit, retry_after
        self.used, self.exhausted = 0, False

    def take(self, size: int) -> bool:
        """Count ``size`` more bytes held; False (nothing counted) where they do not fit."""
        if self.used + size > self.limit:
            if not self.exhausted:  # once a spell, not once a request
                log.warning(
                    "request bodies fill the %d-byte budget (KILN_MAX_INFLIGHT_BODY_BYTES): refusing "
                    "requests until some are answered",
                    self.limit,
                )
                self.exhausted = True
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        """Count ``size`` bytes as no longer held."""
        self.used -= size
        if self.exhausted and self.used <= self.limit // 2:
            self.exhausted = False

    def refusal(self) -> Unavailable:
        """The error a request refused for want of budget gets."""
        message = "the gateway holds as many request bodies as it may: retry later"
        return Unavailable(message, retry_after=self.retry_after)


class BodyHold:
    """What one HTTP request holds of a :class:`BodyBudget`: its body as it arrives (or its declared
    length), then what the body inflates to, the larger of the two (as a gRPC call's ``Call.hold``);
    all of it given back once, when the request ends, however it ends."""

    __slots__ = ("budget", "held", "ended")

    def __init__(self, budget: BodyBudget) -> None:
        self.budget, self.held, self.ended = budget, 0, False

    def hold(self, size: int) -> bool:
        """Hold ``size`` bytes for the request in all (what it holds counted in); False, and nothing
        more held, where they do not fit. A request already ended holds nothing more."""
        if size <= self.held or self.ended:
            return True
        if not self.budget.take(size - self.held):
            return False
        self.held = size
        return True

    def trim(self, size: int) -> None:
        """Hold no more than ``size`` bytes (what an inflation held ahead of its output, given back)."""
        if self.held > size and not self.ended:
            self.budget.give(self.held - size)
            self.held = size

    def release(self) -> None:
        """The request has ended: what it holds goes back to the budget (once, whoever calls first)."""
        self.ended = True
        if self.held:
            self.budget.give(self.held)
            self.held = 0


def inflate(
    body: bytes, encoding: str | None, limit: int, grow: Callable[[int], bool] | None = None
) -> bytes:
    """``body`` as its Content-Encoding says (gzip or deflate inflated, at most ``limit`` bytes: 413
    past it; none or ``identity``: as sent); an encoding the gateway does not read, or a stream that
    is corrupt, cut short or followed by other bytes, is a 400 naming it. One definition for every
    HTTP route that reads a body. ``grow(size)`` is asked before the output passes what it granted
    last (:class:`Inflated`); where it says no, :class:`NoBudget` stops the inflation."""
    plain = _inflate(body, encoding, limit, grow)
    if plain is None:
        raise PayloadTooLarge(f"decompressed request body exceeds the {limit} byte limit")
    return plain


def inflate_small(body: bytes, encoding: str | None, limit: int = LOOP_INFLATE_BYTES) -> bytes | None:
    """:func:`inflate` for a body that inflates to at most ``limit`` bytes; None for a larger one (only
    its first ``limit + 1`` bytes inflated), which :func:`request_body` then inflates in a thread."""
    return _inflate(body, encoding, limit)


def _inflate(
    body: bytes, encoding: str | None, limit: int, grow: Callable[[int], bool] | None = None
) -> bytes | None:
    """``body`` inflated as :func:`inflate` reads it (its 400s), or None past ``limit`` bytes."""
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return body
    window = CONTENT_CODINGS.get(name)
    if window is None:
        raise UnsupportedMediaType(
            f"unsupported Content-Encoding {encoding!r}; use gzip or deflate",
            headers={"Accept-Encoding": "gzip, deflate"},
        )
    out, view, at = Inflated(limit, grow), memoryview(body), 0
    while True:  # gzip: one member after another (RFC 1952), as gzip.decompress reads them
        decoder = zlib.decompressobj(window)
        try:
            end = out.stream(decoder, view, at)
        except zlib.error as exc:
            # after a whole gzip stream, bytes that begin no other member: zlib's words alone ("incorrect
            # header check") named no fault of the stream the client sent, as deflate's refusal does; a
            # later member that is one (gzip's magic) but corrupt (a bad CRC) is named as that member
            reason: object = exc
            if at:
                reason = (
                    f"its gzip member at byte {at} is corrupt ({exc})"
                    if bytes(view[at : at + 2]) == GZIP_MAGIC
                    else f"bytes follow the end of its stream that are no gzip member ({exc})"
                )
            raise BadRequest(f"request body is not valid {name} data: {reason}") from None
        if end is None:
            return None
        if not decoder.eof:  # zlib hands back a cut stream's prefix without a word
            raise BadRequest(f"request body is not valid {name} data: the stream is cut short")
        if end == len(view):
            return out.value()
        if window != CONTENT_CODINGS["gzip"]:
            raise BadRequest(f"request body is not valid {name} data: bytes follow the end of its stream")
        at = end


class NoBudget(Exception):
    """An inflation stopped: the body budget has no room for what the body inflates to."""


class Inflated:
    """What a body inflates to, at most ``limit`` bytes, inflated ``INFLATE_STEP`` bytes of input and of
    output at a time into one growing buffer. In a thread zlib lets go of the GIL while it inflates, but
    what one call does besides held it, and the event loop with it: joining 64 MiB of output (~30 ms),
    copying the input left over after each step (~20 ms for 16 MiB). A step's copies hold it well under
    a millisecond, and the buffer is handed over uncopied (``BytesIO.getvalue``). With ``grow``, the
    output is held in the body budget as it grows, a step (``HOLD_AHEAD``) ahead (many large inflations
    at once were held only once each had ended, their buffers already there)."""

    __slots__ = ("limit", "first", "buffer", "size", "grow", "granted")

    def __init__(self, limit: int, grow: Callable[[int], bool] | None = None) -> None:
        self.limit, self.size = limit, 0
        self.grow, self.granted = grow, 0
        self.first: bytes | None = None  # the first step's output: all of a small body's, handed over
        self.buffer: io.BytesIO | None = None  # from a second step on

    def stream(self, decoder: Any, view: memoryview, at: int) -> int | None:
        """Inflate the stream that begins at ``view[at]`` with ``decoder``; where it ended (the input's
        end where it did not), or None past the limit (one byte past it inflated)."""
        while not decoder.eof and at < len(view):
            data = view[at : at + INFLATE_STEP]
            at += len(data)
            while True:
                at_most = min(INFLATE_STEP, self.limit + 1 - self.size)
                part = decoder.decompress(data, at_most)
                self._keep(part)
                if self.size > self.limit:
                    return None
                data = decoder.unconsumed_tail
                if decoder.eof or (not data and len(part) < at_most):  # ended, or this input used up
                    break
        return at - len(decoder.unused_data)

    def _keep(self, part: bytes) -> None:
        if self.first is None:
            self.first = part
        else:
            if self.buffer is None:  # a second step: from now on into one buffer
                self.buffer = io.BytesIO()
                self.buffer.write(self.first)
            self.buffer.write(part)
        self.size += len(part)
        if self.grow is not None and self.size > self.granted:
            wanted = min(self.size + HOLD_AHEAD, max(self.limit, self.size))  # never past the limit ahead
            if not self.grow(wanted):
                raise NoBudget
            self.granted = wanted

    def value(self) -> bytes:
        """The inflated body, handed over (a large one: the buffer itself)."""
        return self.buffer.getvalue() if self.buffer is not None else self.first or b""


async def request_body(request: Any, limit: int) -> bytes:
    """A Starlette request's body, inflated as its Content-Encoding says (:func:`inflate`; on the event
    loop up to ``LOOP_INFLATE_BYTES``, past it in a thread, as gRPC's messages), what it inflates to held
    in the request's :class:`BodyHold` until the request ends (503 with Retry-After, as for a plain body
    that large, where the budget has no room for it)."""
    body = await request.body()
    encoding = request.headers.get("content-encoding")
    if encoding is None:
        return body
    hold: BodyHold | None = request.scope.get(BODY_HOLD)
    if limit <= LOOP_INFLATE_BYTES:
        plain = inflate(body, encoding, limit)
    else:
        plain = inflate_small(body, encoding)
        if plain is None:  # (a cancelled wait leaves the thread's work, bounded by the limit, to run out)
            grow = None if hold is None else held_from_a_thread(hold.hold)
            try:
                plain = await asyncio.to_thread(inflate, body, encoding, limit, grow)
            except NoBudget:
                raise hold.budget.refusal() from None  # type: ignore[union-attr]
            if hold is not None:
                hold.trim(max(len(body), len(plain)))
    if plain is not body and hold is not None and not hold.hold(len(plain)):
        raise hold.budget.refusal()
    return plain


def held_from_a_thread(hold: Callable[[int], bool]) -> Callable[[int], bool]:
    """``hold`` (a request's or a call's, on the body budget) for an inflation thread: run on the event
    loop (the budget is the loop's alone), the thread waiting for its answer; no answer within
    ``HOLD_WAIT_S`` (the loop gone) is a no. Made on the loop."""
    loop = asyncio.get_running_loop()

    def grow(size: int) -> bool:
        answer: concurrent.futures.Future[bool] = concurrent.futures.Future()

        def on_loop() -> None:
            answer.set_result(hold(size))

        try:
            loop.call_soon_threadsafe(on_loop)
            return answer.result(timeout=HOLD_WAIT_S)
        except (RuntimeError, concurrent.futures.TimeoutError):  # the loop closed or stopped
            return False

    return grow


class BodyLimitMiddleware:
    """Reject by Content-Length when declared, otherwise count streamed bytes; hold the body's bytes in
    the ``budget`` (a declared length whole before the body is read), and what the endpoint inflates it
    to (:func:`request_body`), until the request is answered. ``on_refused(scope, error, status)`` hears
    of each request this layer answers itself (413, 503), which no endpoint or handler sees."""

    def __init__(
        self,
        app: Any,
        max_bytes: int,
        budget: BodyBudget | None = None,
        on_refused: Callable[[dict, BaseException, int], None] | None = None,
    ) -> None:
        self.app, self.max_bytes, self.budget, self.on_refused = app, max_bytes, budget, on_refused

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        declared = stated_size(length) if length is not None else None
        if declared is not None and declared > self.max_bytes:
            await self._too_large(scope, send)
            return
        hold = None if self.budget is None else BodyHold(self.budget)
        if hold is not None:
            if declared is not None and not hold.hold(declared):
                await self._refused(scope, send, hold.budget)
                return
            scope[BODY_HOLD] = hold  # the endpoint holds what the body inflates to in it too
        received = 0
        responded = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                received += size
                if received > self.max_bytes:
                    raise _BodyTooLarge
                if hold is not None and not hold.hold(received):  # a body without Content-Length
                    raise _BudgetSpent
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal responded
            responded = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not responded:
                await self._too_large(scope, send)
        except _BudgetSpent:
            if not responded:
                await self._refused(scope, send, hold.budget)  # type: ignore[union-attr]
        finally:
            if hold is not None:
                hold.release()

    async def _too_large(self, scope: dict, send: Any) -> None:
        error = PayloadTooLarge(f"request body exceeds the {self.max_bytes} byte limit")
        if self.on_refused is not None:
            self.on_refused(scope, error, error.status)
        body = json.dumps({"error": error.message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _refused(self, scope: dict, send: Any, budget: BodyBudget) -> None:
        error = budget.refusal()
        if self.on_refused is not None:
            self.on_refused(scope, error, error.status)
        body = json.dumps({"error": error.message}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"%d" % max(1, round(budget.retry_after))),
        ]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _BudgetSpent(Exception):
    pass


class _BodyTooLarge(PayloadTooLarge):
    def __init__(self) -> None:
        super().__init__("request body exceeds the size limit")
