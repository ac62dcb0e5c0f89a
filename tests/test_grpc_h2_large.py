"""Large request messages at Kiln's gRPC server (serving/protocol/grpc_call.py, h2_calls.py): a message
declared above the limit is refused at its 5-byte prefix, a large one is written into one buffer as its
DATA arrives (joining thousands of frames at dispatch held the event loop 28-166 ms for 64 MiB), a
message must be exactly as long as its prefix says, and a compressed message is held in the body budget
at the size it inflates to. Each test drives one connection in memory (tests/h2_client.py)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from serving.execution.base import InferRequest, InferResponse
from serving.protocol import grpc_call, grpc_h2
from serving.protocol import h2_wire as w
from serving.protocol.grpc_server import unary_methods
from serving.protocol.grpc_servicer import InferenceServicer
from serving.protocol.limits import BodyBudget
from tests.h2_client import MESSAGE, Harness, answer, call_headers, doubling_request, grpc_message, rst_code
from tests.test_grpc import FakeBackend

RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE = "8", "13", "14"
REFUSAL = "the gateway holds as many request bodies as it may: retry later"
ONE_MESSAGE = "a unary call must carry exactly one request message"
LARGE_X = np.arange(3 * 100_000, dtype=np.float32).reshape(-1, 3)  # 1.2 MB: above what is joined
LARGE = grpc_message(doubling_request(LARGE_X).SerializeToString())


@pytest.fixture
def h2() -> Iterator[Harness]:
    harness = Harness(max_message_bytes=4 << 20, budget=BodyBudget(64 << 20))
    _room_for_answers(harness)
    yield harness
    harness.close()


def _room_for_answers(h2: Harness) -> None:
    """Windows the size of the answers (megabytes), then the server's frames so far set aside."""
    h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 1 << 24}), w.window_update(0, 1 << 24))
    h2.frames()


def _status(frames: list, stream: int) -> tuple[str, str]:
    _, _, trailers = answer(frames, stream)
    return trailers["grpc-status"], trailers.get("grpc-message", "")


def _data_frames(stream: int, data: bytes, size: int) -> list[bytes]:
    """``data`` as DATA frames of ``size`` bytes, the last ending the stream."""
    chunks = [data[at : at + size] for at in range(0, len(data), size)]
    return [
        w.frame(w.DATA, w.END_STREAM if i == len(chunks) - 1 else 0, stream, c) for i, c in enumerate(chunks)
    ]


def _assert_doubled(frames: list, stream: int, x: np.ndarray) -> None:
    headers, message, trailers = answer(frames, stream)
    assert headers[":status"] == "200" and trailers["grpc-status"] == "0", trailers
    reply = service_pb2.ModelInferResponse.FromString(message)
    np.testing.assert_array_equal(
        np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(x.shape), x * 2
    )


# --- the prefix: refused at once above the limit ----------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "compressed"])
def test_a_message_declared_above_the_limit_is_refused_at_its_prefix(h2: Harness, compressed: bool) -> None:
    """grpc core reads the length a message declares: a client sending 64 MiB to a smaller limit was
    let send it up to the limit first (held, and counted in the budget, for nothing)."""
    declared = (4 << 20) + 1
    head = bytes((int(compressed),)) + declared.to_bytes(4, "big")
    h2.send(h2.headers(1, call_headers()), w.frame(w.DATA, 0, 1, head + b"x" * 100))
    frames = h2.frames()
    assert _status(frames, 1) == (
        RESOURCE_EXHAUSTED,
        f"SERVER: Received message larger than max ({declared} vs. {4 << 20})",
    )
    assert [rst_code(f) for f in frames if f[0] == w.RST_STREAM] == [w.NO_ERROR]  # stop sending
    assert 1 not in h2.connection.calls and h2.server.budget.used == 0
    h2.send(h2.call(3, MESSAGE))
    assert _status(h2.frames(), 3)[0] == "0"


# --- a large message: one buffer, filled as it arrives -----------------------------------------------


def test_a_large_message_is_written_into_one_buffer_as_it_arrives_and_answered(h2: Harness) -> None:
    frames = _data_frames(1, LARGE, 16_384)
    h2.send(h2.headers(1, call_headers()), *frames[:-1])
    call = h2.connection.calls[1]
    assert call.parts == [], "kept as frames, to be joined at dispatch"
    assert call.body is not None and call.size == len(LARGE) - len(frames[-1]) + w.HEAD.size
    assert h2.server.budget.used == len(LARGE)  # its buffer, held whole from the prefix on
    h2.send(frames[-1])
    _assert_doubled(h2.frames(), 1, LARGE_X)
    assert h2.server.budget.used == 0


@pytest.mark.parametrize("sizes", [(1, 1, 1, 1, 1, 1 << 20), (3, 4, 16_384)], ids=["byte-by-byte", "split"])
def test_a_large_message_whose_prefix_is_split_across_frames_is_answered(h2: Harness, sizes) -> None:
    at, frames = 0, []
    for size in sizes:
        frames.append(w.frame(w.DATA, 0, 1, LARGE[at : at + size]))
        at += size
    frames += _data_frames(1, LARGE[at:], 65_536)
    h2.send(h2.headers(1, call_headers()), *frames)
    _assert_doubled(h2.frames(), 1, LARGE_X)


def test_a_compressed_message_larger_than_what_is_joined_is_gathered_and_inflated_in_a_thread(
    h2: Harness,
) -> None:
    x = np.random.default_rng(0).standard_normal((150_000, 3)).astype(np.float32)  # 1.8 MB, barely shrinks
    packed = gzip.compress(doubling_request(x).SerializeToString())
    assert len(packed) > grpc_call.LOOP_JOIN_BYTES
    h2.send(
        h2.headers(1, call_headers(grpc_encoding="gzip")),
        *_data_frames(1, grpc_message(packed, True), 16_384),
    )
    _assert_doubled(h2.frames(), 1, x)
    assert h2.server.budget.used == 0


# --- exactly one message ----------------------------------------------------------------------------


@pytest.mark.parametrize("message", [MESSAGE, LARGE], ids=["small", "large"])
def test_bytes_past_the_declared_message_end_the_call_as_they_arrive(h2: Harness, message: bytes) -> None:
    """Not at END_STREAM: a large message's buffer holds what its prefix declared and no more."""
    data = message + b"more"
    frames = [w.frame(w.DATA, 0, 1, data[at : at + 65_536]) for at in range(0, len(data), 65_536)]
    h2.send(h2.headers(1, call_headers()), *frames)
    assert _status(h2.frames(), 1) == (INTERNAL, ONE_MESSAGE)
    assert 1 not in h2.connection.calls and h2.server.budget.used == 0


@pytest.mark.parametrize("message", [MESSAGE, LARGE], ids=["small", "large"])
def test_a_message_ending_before_its_declared_length_is_refused(h2: Harness, message: bytes) -> None:
    h2.send(h2.headers(1, call_headers()), *_data_frames(1, message[:-1], 65_536))
    assert _status(h2.frames(), 1) == (INTERNAL, ONE_MESSAGE)
    assert h2.server.budget.used == 0
    h2.send(h2.call(3, MESSAGE))
    assert _status(h2.frames(), 3)[0] == "0"


def test_a_large_message_whose_declared_length_does_not_fit_the_budget_is_refused_at_its_prefix() -> None:
    """As an HTTP body whose Content-Length does not fit: its buffer would hold that much."""
    h2 = Harness(max_message_bytes=4 << 20, budget=BodyBudget(len(LARGE) - 1))
    try:
        h2.frames()
        h2.send(h2.headers(1, call_headers()), w.frame(w.DATA, 0, 1, LARGE[:1000]))
        assert _status(h2.frames(), 1) == (UNAVAILABLE, REFUSAL)
        assert 1 not in h2.connection.calls and h2.server.budget.used == 0
        h2.send(h2.call(3, MESSAGE))
        assert _status(h2.frames(), 3)[0] == "0"
    finally:
        h2.close()


def test_a_large_message_holding_its_buffer_is_not_refused_for_a_frame_arriving_in_pieces() -> None:
    """A DATA frame arriving in pieces holds its length in the budget from its head on (h2_watch); a
    call that already holds its whole message was charged again, and refused with little room left."""
    h2 = Harness(max_message_bytes=4 << 20, budget=BodyBudget(len(LARGE) + 1000))
    try:
        _room_for_answers(h2)
        first, *rest = _data_frames(1, LARGE, 16_384)
        h2.send(h2.headers(1, call_headers()), first)
        assert h2.server.budget.used == len(LARGE)
        h2.send(*rest, chunk=4096)
        _assert_doubled(h2.frames(), 1, LARGE_X)
        assert h2.server.budget.used == 0
    finally:
        h2.close()


def test_a_large_message_reset_while_arriving_gives_its_bytes_back(h2: Harness) -> None:
    h2.send(h2.headers(1, call_headers()), *_data_frames(1, LARGE, 65_536)[:5])
    assert h2.server.budget.used == len(LARGE)
    h2.send(w.rst_stream(1, w.CANCEL))
    assert 1 not in h2.connection.calls and h2.server.budget.used == 0


# --- the body budget holds what a compressed message inflates to -------------------------------------


class _Watching(FakeBackend):
    """FakeBackend noting how many bytes the body budget holds while each request is served."""

    budget: BodyBudget | None = None

    def __init__(self) -> None:
        super().__init__()
        self.held: list[int] = []

    async def infer(self, request: InferRequest) -> InferResponse:
        self.held.append(self.budget.used)
        return await super().infer(request)


class _WatchedHarness(Harness):
    backend = _Watching()

    @staticmethod
    async def _server(max_message_bytes, read_timeout_s, budget, send_timeout_s) -> grpc_h2.H2GrpcServer:
        _WatchedHarness.backend.budget = budget
        methods = unary_methods(InferenceServicer(_WatchedHarness.backend))
        return grpc_h2.H2GrpcServer(methods, max_message_bytes, read_timeout_s, budget, send_timeout_s)


@pytest.mark.parametrize("rows", [50_000, 200_000], ids=["inflated-on-the-loop", "inflated-in-a-thread"])
def test_a_compressed_message_is_held_in_the_budget_at_its_inflated_size_while_served(rows: int) -> None:
    plain = doubling_request(np.zeros((rows, 3), np.float32)).SerializeToString()
    packed = grpc_message(gzip.compress(plain), compressed=True)
    h2 = _WatchedHarness(max_message_bytes=4 << 20, budget=BodyBudget(4 << 20))
    h2.backend.held.clear()
    try:
        _room_for_answers(h2)
        h2.send(h2.call(1, packed, grpc_encoding="gzip"))
        assert _status(h2.frames(), 1)[0] == "0"
        assert h2.backend.held == [len(plain)]  # counted once: the compressed bytes are dropped by then
        assert h2.server.budget.used == 0
    finally:
        h2.close()


@pytest.mark.parametrize("rows", [50_000, 200_000], ids=["inflated-on-the-loop", "inflated-in-a-thread"])
def test_a_compressed_message_inflating_past_the_budget_is_unavailable(rows: int) -> None:
    """Its few compressed bytes fit the budget; the megabytes it inflates to, held while it is served,
    do not: refused as a message that large sent plain would be, and the budget given back."""
    plain = doubling_request(np.zeros((rows, 3), np.float32)).SerializeToString()
    h2 = Harness(max_message_bytes=4 << 20, budget=BodyBudget(len(plain) - 1))
    try:
        _room_for_answers(h2)
        h2.send(h2.call(1, grpc_message(gzip.compress(plain), compressed=True), grpc_encoding="gzip"))
        assert _status(h2.frames(), 1) == (UNAVAILABLE, REFUSAL)
        assert h2.server.budget.used == 0
        h2.send(h2.call(3, MESSAGE))
        assert _status(h2.frames(), 3)[0] == "0" and h2.server.budget.used == 0
    finally:
        h2.close()


def test_a_message_inflated_in_a_thread_asks_the_budget_as_it_grows_and_stops_at_a_no() -> None:
    """HTTP's rule for gRPC: the output is held as it grows, a step ahead, not once whole; where the
    budget says no the inflation stops there (the call then ends UNAVAILABLE, as the test above)."""
    from tritonclient.grpc import service_pb2

    from serving.protocol.h2_calls import _inflated_request
    from serving.protocol.limits import INFLATE_STEP, NoBudget

    plain = doubling_request(np.zeros((1_000_000, 3), np.float32)).SerializeToString()  # ~12 MB
    asked: list[int] = []

    def grow(size: int) -> bool:
        asked.append(size)
        return size <= 4 * INFLATE_STEP

    with pytest.raises(NoBudget):
        _inflated_request(service_pb2.ModelInferRequest, b"gzip", gzip.compress(plain), 16 << 20, grow)
    assert asked == sorted(asked) and asked[0] <= 2 * INFLATE_STEP and asked[-1] <= 6 * INFLATE_STEP
    request, size = _inflated_request(service_pb2.ModelInferRequest, b"gzip", gzip.compress(plain), 16 << 20)
    assert size == len(plain) and request.model_name


@pytest.mark.parametrize("rows", [50_000, 200_000], ids=["inflated-on-the-loop", "inflated-in-a-thread"])
def test_a_compressed_message_refused_for_what_it_inflates_to_is_counted_for_its_model(rows: int) -> None:
    """Refused once whole (past the budget, or inflating past the message limit), before it is parsed:
    counted, as the refusals made while it arrives are, for the model its start names."""
    from tests.test_body_budget import _CountingHarness

    plain = doubling_request(np.zeros((rows, 3), np.float32)).SerializeToString()
    packed = grpc_message(gzip.compress(plain), compressed=True)
    metrics = _CountingHarness.metrics

    def counted(status: str) -> float:
        return metrics.sample("kiln_request_failures_total", model="double", status=status) or 0.0

    before = counted("503"), counted("413")
    for budget, max_bytes, code in ((len(plain) - 1, 4 << 20, UNAVAILABLE), (1 << 30, len(plain) - 1, "8")):
        h2 = _CountingHarness(max_message_bytes=max_bytes, budget=BodyBudget(budget))
        try:
            _room_for_answers(h2)
            h2.send(h2.call(1, packed, grpc_encoding="gzip"))
            assert _status(h2.frames(), 1)[0] == code
        finally:
            h2.close()
    assert (counted("503"), counted("413")) == (before[0] + 1, before[1] + 1)
