"""Kiln's HTTP/2 gRPC server when a client sends its request message in many tiny DATA frames, or a stream of
many tiny messages: what the call holds stays close to the bytes the body budget counts for it (an
object a frame, or a queue entry a message, held ~22 or ~13 times them: a 1 GiB budget let clients hold
~22 GiB), and the message is read whole and answered as one sent in one frame would be, whatever mix
of frame sizes carried it."""

from __future__ import annotations

import sys
import tracemalloc
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from serving.protocol import h2_wire as w
from serving.protocol.limits import BodyBudget
from tests.h2_client import (
    MODEL_STREAM_INFER,
    Harness,
    answer,
    call_headers,
    connected,
    doubling_request,
    grpc_message,
)

X = np.arange(15_000, dtype=np.float32).reshape(5_000, 3)
MESSAGE = grpc_message(doubling_request(X).SerializeToString())  # ~60 KB: gathered as its DATA arrives


@pytest.fixture
def h2() -> Iterator[Harness]:
    with connected(budget=BodyBudget(1 << 24)) as harness:
        yield harness


def _pieces(data: bytes, sizes: list[int]) -> list[bytes]:
    """``data`` cut into pieces of the ``sizes`` given, in turn, over and over."""
    pieces, at, turn = [], 0, 0
    while at < len(data):
        size = sizes[turn % len(sizes)]
        pieces.append(data[at : at + size])
        at, turn = at + size, turn + 1
    return pieces


def _doubled(frames: list) -> np.ndarray:
    headers, message, trailers = answer(frames, 1)
    assert trailers["grpc-status"] == "0", trailers
    reply = service_pb2.ModelInferResponse.FromString(message)
    return np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(X.shape)


def test_a_message_in_two_byte_data_frames_holds_about_its_own_size(h2: Harness) -> None:
    h2.send(h2.headers(1, call_headers()))
    h2.send(*(w.frame(w.DATA, 0, 1, piece) for piece in _pieces(MESSAGE[:-2], [2])))
    call = h2.connection.calls[1]
    held = sys.getsizeof(call.parts) + sum(sys.getsizeof(part) for part in call.parts)
    counted = h2.server.budget.used
    assert counted == len(MESSAGE) - 2
    assert held < 2 * counted, f"{held} bytes held for the {counted} the budget counts"
    h2.send(w.frame(w.DATA, w.END_STREAM, 1, MESSAGE[-2:]))
    np.testing.assert_array_equal(_doubled(h2.frames()), X * 2)
    assert h2.server.budget.used == 0


@pytest.mark.parametrize(
    "sizes",
    [[1], [16_384, 1, 7], [3, 16_384], [1023, 1024, 1, 5000], [5, 2000, 2, 2, 900]],
    ids=["1", "16k-1-7", "3-16k", "around-the-threshold", "mixed"],
)
def test_a_message_in_frames_of_any_mix_of_sizes_is_read_whole(h2: Harness, sizes: list[int]) -> None:
    pieces = _pieces(MESSAGE, sizes)
    h2.send(
        h2.headers(1, call_headers()),
        *(w.frame(w.DATA, 0, 1, piece) for piece in pieces[:-1]),
        w.frame(w.DATA, w.END_STREAM, 1, pieces[-1]),
    )
    np.testing.assert_array_equal(_doubled(h2.frames()), X * 2)


# --- a stream's tiny messages: each waiting message's queue entry counts in the budget ------------


def test_a_stream_of_empty_messages_holds_about_what_the_budget_counts(h2: Harness) -> None:
    h2.send(h2.headers(1, call_headers(MODEL_STREAM_INFER)))
    before = h2.server.budget.used
    tracemalloc.start()
    try:  # read, not yet served: every message waits in the stream's inbox
        h2.connection.data_received(w.frame(w.DATA, 0, 1, grpc_message(b"") * 20_000))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    counted = h2.server.budget.used - before
    assert held < 1.5 * counted, f"{held} bytes held for the {counted} the budget counts"


def test_a_stream_of_empty_messages_past_the_budget_is_refused_unavailable() -> None:
    """10 000 empty messages are 50 000 bytes, but waiting in the inbox they hold ~13 times that."""
    with connected(budget=BodyBudget(100_000)) as h2:
        h2.send(h2.headers(1, call_headers(MODEL_STREAM_INFER)))
        h2.connection.data_received(w.frame(w.DATA, 0, 1, grpc_message(b"") * 10_000))
        assert 1 not in h2.connection.calls
        _, _, trailers = answer(h2.frames(), 1)
        assert trailers["grpc-status"] == str(grpc.StatusCode.UNAVAILABLE.value[0]), trailers
    assert h2.server.budget.used == 0
