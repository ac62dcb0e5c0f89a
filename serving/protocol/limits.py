"""Request body limits: 413 above a byte limit (before buffering), JSON that cannot hurt the parser,
and JSON integers read as the published schema reads them."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BeforeValidator

from serving.errors import BadRequest, PayloadTooLarge


def parse_json(raw: bytes, what: str) -> Any:
    """Decode a JSON request body; bad UTF-8, bad JSON and nesting too deep to parse are a 400.

    Nesting is bounded by the interpreter's recursion limit (about 1000 levels); the body size is
    bounded by :class:`BodyLimitMiddleware` before this runs.
    """
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{what} is not valid UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
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
    """Reject by Content-Length when declared, otherwise count streamed bytes."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _too_large(send, self.max_bytes)
            return
        received = 0
        responded = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
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


class _BodyTooLarge(PayloadTooLarge):
    def __init__(self) -> None:
        super().__init__("request body exceeds the size limit")


async def _too_large(send: Any, limit: int) -> None:
    body = json.dumps({"error": f"request body exceeds the {limit} byte limit"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
