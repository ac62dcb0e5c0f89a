"""A ModelStreamInfer client sending faster than its servicer takes the messages is held back by flow
control, as grpc core holds it: the stream's window is withheld while its waiting messages hold
``BACKLOG_BYTES``, and granted again as the servicer takes them. Granted regardless, a client
streaming faster than its model pushed its whole stream into the gateway in a second or two, until
the process's body budget was full: its stream ended UNAVAILABLE, and every other request was refused."""

from __future__ import annotations

import asyncio
from typing import Any

from tritonclient.grpc import service_pb2

from serving.protocol import grpc_h2
from serving.protocol import h2_wire as w
from serving.protocol.h2_streams import BACKLOG_BYTES
from tests.h2_client import MODEL_STREAM_INFER, Harness, call_headers, grpc_message

# a 512 KiB request, each answered (the servicer reads none of it)
MESSAGE = grpc_message(
    service_pb2.ModelInferRequest(raw_input_contents=[bytes(512 << 10)]).SerializeToString()
)
SENT = 4 * BACKLOG_BYTES // len(MESSAGE) * len(MESSAGE)


class _GatedHarness(Harness):
    """A server whose one stream method takes no message until ``gate`` is set, then answers each."""

    gate: asyncio.Event

    async def _server(self, *limits: Any) -> grpc_h2.H2GrpcServer:  # type: ignore[override]
        self.gate = asyncio.Event()

        async def slow(requests: Any, context: Any) -> Any:
            await self.gate.wait()
            async for _ in requests:
                yield service_pb2.ModelStreamInferResponse()

        path = MODEL_STREAM_INFER.encode()
        return grpc_h2.H2GrpcServer({}, *limits, {path: (slow, service_pb2.ModelInferRequest)})


def _granted(frames: list, stream: int) -> int:
    return sum(
        int.from_bytes(payload, "big")
        for kind, _, on, payload in frames
        if kind == w.WINDOW_UPDATE and on == stream
    )


def test_a_stream_whose_servicer_does_not_keep_up_gets_no_more_window_until_it_does() -> None:
    h2 = _GatedHarness(max_message_bytes=1 << 20)
    try:
        h2.frames()
        h2.send(h2.headers(1, call_headers(MODEL_STREAM_INFER)))
        for _ in range(SENT // len(MESSAGE)):
            h2.send(w.frame(w.DATA, 0, 1, MESSAGE))
        granted = _granted(h2.frames(), 1)
        assert granted <= BACKLOG_BYTES, granted  # the rest withheld while the messages wait
        h2.gate.set()
        answers = 0
        for _ in range(20):  # each turn of the harness lets the servicer take some of the messages
            h2.advance(0.0)
            frames = h2.frames()
            granted += _granted(frames, 1)
            answers += sum(1 for kind, _, on, _ in frames if kind == w.DATA and on == 1)
        assert granted == SENT, (granted, SENT)  # all of it, once the servicer took the messages
        assert answers == SENT // len(MESSAGE)
        h2.send(w.frame(w.DATA, w.END_STREAM, 1, MESSAGE))
        h2.advance(0.0)
    finally:
        h2.close()


def test_a_message_the_window_held_back_is_not_timed_out_as_the_clients_pause() -> None:
    h2 = _GatedHarness(max_message_bytes=1 << 20, read_timeout_s=30.0)
    try:
        h2.frames()
        h2.send(h2.headers(1, call_headers(MODEL_STREAM_INFER)))
        for _ in range(2 * BACKLOG_BYTES // len(MESSAGE)):
            h2.send(w.frame(w.DATA, 0, 1, MESSAGE))
        h2.send(w.frame(w.DATA, 0, 1, MESSAGE[:1000]))  # then the window ran out, the server's doing
        h2.advance(100.0)
        assert 1 in h2.connection.calls, h2.frames()
        h2.gate.set()
        h2.send(w.frame(w.DATA, w.END_STREAM, 1, MESSAGE[1000:]))
        for _ in range(20):
            h2.advance(0.0)
        frames = h2.frames()
        answers = sum(1 for kind, _, on, _ in frames if kind == w.DATA and on == 1)
        assert answers == 2 * BACKLOG_BYTES // len(MESSAGE) + 1
    finally:
        h2.close()
