"""Request body limits: 413 above a byte limit (before buffering), 503 while the bodies the gateway
holds already fill its memory budget, JSON that cannot hurt the parser, and JSON integers read as the
published schema reads them."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from pydantic import BeforeValidator

from serving.errors import BadRequest, PayloadTooLarge, Unavailable

log = logging.getLogger(__name__)


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


def parse_json(raw: bytes, what: str) -> Any:
    """Decode a JSON request body; bad UTF-8, bad JSON, an integer too long to convert and nesting too
    deep to parse are a 400.

    Nesting is bounded by the interpreter's recursion limit (about 1000 levels); the body size is
    bounded by :class:`BodyLimitMiddleware` before this runs.
    """
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{what} is not valid UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}") from None
    except ValueError as exc:  # an integer literal over Python's 4 300 digits (sys.int_info)
        raise BadRequest(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(f"{what} is nested too deeply") from None


def _integral(value: Any) -> Any:
    """A float with no fractional part as the integer it equals; anything else unchanged."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


# An integer field of a strict request model. JSON has one number type, and the OpenAPI document's
# ``"type": "integer"`` (JSON Schema) admits 2.0 as the integer 2, as clients that write every number
# as a float send it; 2.5, true and "2" stay refused (422), as strict validation refuses them.
JsonInt = Annotated[int, BeforeValidator(_integral)]


class BodyLimitMiddleware:
    """Reject by Content-Length when declared, otherwise count streamed bytes; hold the body's bytes in
    the ``budget`` (a declared length whole before the body is read) until the request is answered."""

    def __init__(self, app: Any, max_bytes: int, budget: BodyBudget | None = None) -> None:
        self.app, self.max_bytes, self.budget = app, max_bytes, budget

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        if declared is not None and declared > self.max_bytes:
            await _too_large(send, self.max_bytes)
            return
        budget = self.budget
        held = 0
        if budget is not None and declared is not None:
            if not budget.take(declared):
                await _refused(send, budget)
                return
            held = declared
        received = 0
        responded = False

        async def limited_receive() -> dict:
            nonlocal received, held
            message = await receive()
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                received += size
                if received > self.max_bytes:
                    raise _BodyTooLarge
                if budget is not None and received > held:  # a body without Content-Length
                    if not budget.take(received - held):
                        raise _BudgetSpent
                    held = received
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal responded
            responded = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not responded:
                await _too_large(send, self.max_bytes)
        except _BudgetSpent:
            if not responded:
                await _refused(send, budget)  # type: ignore[arg-type]
        finally:
            if held:
                budget.give(held)  # type: ignore[union-attr]


class _BudgetSpent(Exception):
    pass


class _BodyTooLarge(PayloadTooLarge):
    def __init__(self) -> None:
        super().__init__("request body exceeds the size limit")


async def _refused(send: Any, budget: BodyBudget) -> None:
    error = budget.refusal()
    body = json.dumps({"error": error.message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"%d" % max(1, round(budget.retry_after))),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _too_large(send: Any, limit: int) -> None:
    body = json.dumps({"error": f"request body exceeds the {limit} byte limit"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
