"""The error types every layer raises: each carries the HTTP status a client sees.

Front ends map them to their wire format (JSON ``{"error": ...}`` over HTTP, the gRPC status Triton
would use); nothing below the protocol layer knows HTTP or gRPC.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import Decimal


class ServingError(Exception):
    """A failure a client is told about, with its HTTP status (and Retry-After when overloaded)."""

    status: int = 500

    def __init__(
        self, message: str, *, retry_after: float | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.headers = headers  # more response headers an HTTP answer carries (e.g. Accept-Encoding)


class BadRequest(ServingError):
    status = 400


class ModelNotFound(ServingError):
    status = 404


class PayloadTooLarge(ServingError):
    status = 413


class UnsupportedMediaType(ServingError):
    """A body in a Content-Encoding the gateway does not read (RFC 9110: 415, with Accept-Encoding)."""

    status = 415


class UnprocessableInput(ServingError):
    status = 422


class NotServed(ServingError):
    """A part of Triton's protocol the gateway does not serve (an extension it does not list)."""

    status = 501


class Overloaded(ServingError):
    status = 429


class Unavailable(ServingError):
    status = 503


class DeadlineExceeded(ServingError):
    status = 504


def seconds_text(seconds: float) -> str:
    """``seconds`` as a 504 names the time its request was given: three significant digits (the time a
    deadline left, 29.9968, reads 30), whole seconds from 100 up, never in exponent notation (a 3600 s
    limit read "3.6e+03 s")."""
    if seconds >= 100:
        return f"{seconds:.0f}"
    return format(Decimal(f"{seconds:.3g}"), "f")


@dataclass(frozen=True)
class Deadline:
    """A request's deadline (``--request-timeout-s`` from its body read): the event loop's time it falls
    at, and the limit it is (for its 504). Its waits before the model (JSON parsing in the helper, image
    decoding) are held to it, and the model is given what it leaves (``InferRequest.deadline_s``)."""

    at: float
    seconds: float

    @classmethod
    def from_now(cls, seconds: float) -> Deadline:
        return cls(asyncio.get_running_loop().time() + seconds, seconds)

    def left(self) -> float:
        return max(self.at - asyncio.get_running_loop().time(), 0.0)

    def passed(self, where: str, what: str) -> DeadlineExceeded:
        """The request's 504: ``where`` it waited, ``what`` it waited for when its deadline passed."""
        return DeadlineExceeded(
            f"{where}: the request's {seconds_text(self.seconds)} s deadline (--request-timeout-s) passed "
            f"while it waited {what}"
        )


# Set on an error the model answered a request with, once it had taken the request (its run failed, it
# timed out queued or running, a translator refused its texts or options), as against the server's
# refusal before it (an unknown model or version, a tensor that does not fit its config, a full queue).
# Triton tells the two apart on a stream: its error answer names the model only in the first case.
MODELS_ANSWER = "_kiln_models_answer"


def mark_models_answer(error: BaseException) -> None:
    """Mark ``error`` as the model's answer to a request it had taken (see :data:`MODELS_ANSWER`)."""
    setattr(error, MODELS_ANSWER, True)


def is_models_answer(error: BaseException) -> bool:
    return getattr(error, MODELS_ANSWER, False)
