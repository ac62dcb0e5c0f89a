"""What routes answer and what the OpenAPI document says they answer: error bodies, statuses, types.

Every error the gateway sends is JSON ``{"error": ...}`` (:func:`error_response`); each route lists
exactly the statuses its handler can produce (:func:`errors`), so a client generated from
``/openapi.json`` knows them all.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from serving.errors import (
    BadRequest,
    DeadlineExceeded,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    Unavailable,
    UnprocessableInput,
    UnsupportedMediaType,
)
from serving.protocol.h2_wire import bounded_message


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str


def error_response(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": message}``; text a client sent that is not valid Unicode is escaped, never a 500, and
    a message echoing a long name a client sent (a model, an input, a datatype: a 60 KB URL, a 64 MiB
    body) is cut as the gRPC status carrying it is (:func:`bounded_message`), never sent back whole."""
    text = bounded_message(message.encode("utf-8", "backslashreplace").decode("utf-8"))
    return JSONResponse({"error": text}, status_code=status, headers=headers)


RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
}
ACCEPT_ENCODING = {
    "Accept-Encoding": {
        "description": "the Content-Encodings the gateway reads",
        "schema": {"type": "string"},
    }
}
MEANING = {
    BadRequest.status: "malformed input: not JSON/UTF-8, undecodable image or tensor, wrong model task",
    ModelNotFound.status: "unknown model or version",
    PayloadTooLarge.status: "body, image, text or count over its limit",
    UnsupportedMediaType.status: "a Content-Encoding the gateway does not read (Accept-Encoding names those it reads)",
    UnprocessableInput.status: "the request violates this schema (the message names the field)",
    Overloaded.status: "queue full: retry after Retry-After seconds",
    Unavailable.status: "not ready, shutting down, the backend is unreachable, or the request bodies "
    "held fill the gateway's budget (Retry-After)",
    DeadlineExceeded.status: "the request did not finish within the gateway's deadline",
}
# Statuses every inference route can answer beyond its own input checks.
OVERLOAD = (Overloaded.status, Unavailable.status, DeadlineExceeded.status)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses (JSON ErrorBody, Retry-After on 429/503,
    Accept-Encoding on 415)."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorBody, "description": MEANING[status]}
        if status in (Overloaded.status, Unavailable.status):
            entry["headers"] = RETRY_AFTER
        elif status == UnsupportedMediaType.status:
            entry["headers"] = ACCEPT_ENCODING
        responses[status] = entry
    return responses


def empty(description: str) -> dict[str, Any]:
    """A response with no body (and no content type), as Triton answers health checks."""
    return {"description": description, "content": {}}


VERSION_PARAMETER = {
    "name": "version",
    "in": "path",
    "required": True,
    "description": "model version (digits)",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
VERSIONED = {"parameters": [VERSION_PARAMETER]}


def drop_framework_422(openapi: dict[str, Any]) -> None:
    """Remove the 422 FastAPI documents on every route with a parameter (its HTTPValidationError body).

    Path parameters here are plain strings that cannot fail validation, and the gateway's 422s are
    ErrorBody JSON documented by :func:`errors` on the routes that produce them.
    """
    for operations in openapi.get("paths", {}).values():
        for operation in operations.values():
            framework = operation.get("responses", {}).get("422", {})
            if "HTTPValidationError" in str(framework):
                del operation["responses"]["422"]
    schemas = openapi.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
