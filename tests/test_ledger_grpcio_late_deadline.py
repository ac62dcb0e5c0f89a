"""On grpcio's server (``--grpc-server grpcio``), a refusal whose status grpc core can no longer send
(core ended the call first: its deadline passed just as the backend's own timer at that deadline
answered 504, or its client left) ends the servicer as a cancelled call does, which grpcio logs at
DEBUG. In a storm of tritonclient calls with tight deadlines the failed send escaped the servicer, and
grpcio logged ``ExecuteBatchError raised in core by servicer method`` at ERROR with a traceback (2 in
~500 such calls). The race is sub-millisecond, so the context's abort is made to fail as grpcio's did."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from serving.errors import BadRequest, DeadlineExceeded
from serving.protocol.grpc_servicer import _abort


class EndedContext:
    """A grpcio servicer context whose call core has ended: sending its status fails in core."""

    def __init__(self) -> None:
        self.trailing: tuple = ()

    def set_trailing_metadata(self, metadata: tuple) -> None:
        self.trailing = metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise grpc.aio.InternalError('Failed "execute_batch": (SendStatusFromServerOperation,)')


class LiveContext(EndedContext):
    """A call still open: its abort sends the status and raises AbortError, as grpcio's does."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.sent = (code, details)
        raise grpc.aio.AbortError("Locally aborted.")


@pytest.mark.parametrize(
    "error", [DeadlineExceeded("translation did not finish within 0.003s"), BadRequest("x")]
)
def test_a_status_core_can_no_longer_send_ends_the_servicer_as_a_cancelled_call(error) -> None:
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(_abort(EndedContext(), error))


def test_a_status_of_a_call_still_open_is_sent_as_before() -> None:
    context = LiveContext()
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(_abort(context, DeadlineExceeded("late")))
    assert context.sent == (grpc.StatusCode.DEADLINE_EXCEEDED, "late")
