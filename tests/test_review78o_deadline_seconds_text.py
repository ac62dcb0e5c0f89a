"""Every 504 names its time as :func:`serving.errors.seconds_text` writes it (three significant digits,
whole seconds from 100 up, never in exponent notation), not only the batcher's, the scheduler's and the
tokenizer thread's: the Triton backend's 504, given what a large body's JSON parse left of the deadline
(29.9968 s) or a gRPC client's remaining deadline, read "Triton did not answer infer within 29.9968s"
where the embedded backend's read 30; and a wait held to ``--request-timeout-s`` (JSON parsing, image
decoding) read "the request's 2.592e+06 s deadline" for a 30-day limit."""

from __future__ import annotations

import asyncio

import pytest

from serving.errors import Deadline, DeadlineExceeded
from serving.execution.triton_connection import TritonConnection


class _Silent:
    """A Triton client whose calls never answer."""

    async def infer(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        await asyncio.Event().wait()


def test_the_triton_backend_s_504_names_three_digits() -> None:
    connection = TritonConnection("127.0.0.1:1", "http", retry_after_s=1.0, probe_timeout_s=1.0)
    connection._client = _Silent()

    async def call() -> str:
        with pytest.raises(DeadlineExceeded) as late:
            await connection._call("infer", "m", [], timeout_s=0.0299968)  # 30 ms less what a parse took
        return late.value.message

    assert asyncio.run(call()) == "Triton did not answer infer within 0.03s"


def test_a_request_timeout_wait_s_504_names_whole_seconds_not_exponent_notation() -> None:
    message = Deadline(0.0, 30 * 86400.0).passed("JSON parsing", "for the JSON parse process").message
    assert message.startswith("JSON parsing: the request's 2592000 s deadline (--request-timeout-s) passed")
