"""Kiln's gRPC server against RFC 9113, frame by frame: the connection errors it must answer with
GOAWAY, the stream errors that end one call and leave the connection serving, the legal framings real
clients rarely use (padding, CONTINUATION, trailers, tiny windows), and generated frame sequences that
must never raise out of the server. Each test drives one connection in memory (tests/h2_client.py)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import hpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from serving.protocol import h2_control, h2_requests
from serving.protocol import h2_wire as w
from serving.protocol.limits import BodyBudget
from tests.h2_client import (
    MODEL_STREAM_INFER,
    Harness,
    answer,
    call_headers,
    connected,
    doubling_request,
    goaway_code,
    grpc_message,
    parse_frames,
    rst_code,
)
from tests.repo_fixtures import wire_fuzz_settings

X = np.arange(6, dtype=np.float32).reshape(2, 3)
MESSAGE = grpc_message(doubling_request(X).SerializeToString())


@pytest.fixture
def h2() -> Iterator[Harness]:
    with connected() as harness:
        yield harness


def _doubled(message: bytes) -> np.ndarray:
    reply = service_pb2.ModelInferResponse.FromString(message)
    return np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(X.shape)


def _assert_answered(frames: list, stream: int) -> None:
    headers, message, trailers = answer(frames, stream)
    assert headers[":status"] == "200" and trailers["grpc-status"] == "0", (headers, trailers)
    np.testing.assert_array_equal(_doubled(message), X * 2)


def _status(frames: list, stream: int) -> tuple[str, str]:
    _, _, trailers = answer(frames, stream)
    return trailers["grpc-status"], trailers.get("grpc-message", "")


# --- connection errors: GOAWAY with the RFC's code, then the connection closes ---------------------

OPEN = "open"  # a case that first opens stream 1 (its HEADERS, no END_STREAM)
_CONNECTION_ERRORS = {
    # name: (frames after the preface, whether stream 1 is opened first, the GOAWAY code)
    "frame-above-our-max-frame-size": (w.HEAD.pack(0x10, 1, w.DATA, 0, 1), False, w.FRAME_SIZE_ERROR),
    "header-block-interrupted": (w.frame(w.PING, 0, 0, b"8 bytes!"), "open-unended", w.PROTOCOL_ERROR),
    "continuation-without-headers": (w.frame(w.CONTINUATION, w.END_HEADERS, 1, b""), False, w.PROTOCOL_ERROR),
    "continuation-on-another-stream": (
        w.frame(w.CONTINUATION, w.END_HEADERS, 3, b""),
        "open-unended",
        w.PROTOCOL_ERROR,
    ),
    "continuation-flood": (
        b"".join(w.frame(w.CONTINUATION, 0, 1, b"\x00" * 8192) for _ in range(20)),
        "open-unended",
        w.COMPRESSION_ERROR,
    ),
    # empty frames count too (their heads): a flood of them once cost the square of its length in CPU
    "continuation-flood-of-empty-frames": (
        w.frame(w.CONTINUATION, 0, 1, b"") * 15_000,
        "open-unended",
        w.COMPRESSION_ERROR,
    ),
    "push-promise": (w.frame(w.PUSH_PROMISE, w.END_HEADERS, 1, b"\x00\x00\x00\x02"), OPEN, w.PROTOCOL_ERROR),
    "rst-stream-on-stream-0": (w.rst_stream(0, w.CANCEL), False, w.PROTOCOL_ERROR),
    "rst-stream-of-5-bytes": (w.frame(w.RST_STREAM, 0, 1, b"\x00" * 5), OPEN, w.FRAME_SIZE_ERROR),
    "rst-stream-on-an-idle-stream": (w.rst_stream(5, w.CANCEL), OPEN, w.PROTOCOL_ERROR),
    "settings-on-a-stream": (w.frame(w.SETTINGS, 0, 1, b""), OPEN, w.PROTOCOL_ERROR),
    "settings-of-5-bytes": (w.frame(w.SETTINGS, 0, 0, b"\x00" * 5), False, w.FRAME_SIZE_ERROR),
    "settings-ack-with-values": (w.frame(w.SETTINGS, w.ACK, 0, b"\x00" * 6), False, w.FRAME_SIZE_ERROR),
    "initial-window-above-2^31-1": (
        w.settings_frame({w.INITIAL_WINDOW_SIZE: 2**31}),
        False,
        w.FLOW_CONTROL_ERROR,
    ),
    "max-frame-size-below-16384": (w.settings_frame({w.MAX_FRAME_SIZE: 16383}), False, w.PROTOCOL_ERROR),
    "enable-push-2": (w.settings_frame({w.ENABLE_PUSH: 2}), False, w.PROTOCOL_ERROR),
    "ping-on-a-stream": (w.frame(w.PING, 0, 1, b"8 bytes!"), OPEN, w.PROTOCOL_ERROR),
    "ping-of-7-bytes": (w.frame(w.PING, 0, 0, b"7 bytes"), False, w.FRAME_SIZE_ERROR),
    "priority-on-stream-0": (w.frame(w.PRIORITY, 0, 0, b"\x00\x00\x00\x01\x10"), False, w.PROTOCOL_ERROR),
    "connection-window-update-of-0": (w.window_update(0, 0), False, w.PROTOCOL_ERROR),
    "connection-window-above-2^31-1": (w.window_update(0, 2**31 - 1), False, w.FLOW_CONTROL_ERROR),
    "window-update-on-an-idle-stream": (w.window_update(7, 1), OPEN, w.PROTOCOL_ERROR),
    "settings-pushing-a-call-window-above-2^31-1": (
        w.window_update(1, w.MAX_WINDOW - w.DEFAULT_WINDOW)
        + w.settings_frame({w.INITIAL_WINDOW_SIZE: 65_536}),
        OPEN,
        w.FLOW_CONTROL_ERROR,
    ),
    "headers-padding-past-the-frame": (
        w.frame(w.HEADERS, w.END_HEADERS | w.PADDED, 3, b"\x09\x83"),
        False,
        w.PROTOCOL_ERROR,
    ),
    "data-padding-past-the-frame": (w.frame(w.DATA, w.PADDED, 1, b"\x04abc"), OPEN, w.PROTOCOL_ERROR),
}


@pytest.mark.parametrize(("frames", "opened", "code"), _CONNECTION_ERRORS.values(), ids=_CONNECTION_ERRORS)
def test_a_connection_error_is_answered_with_goaway_and_its_rfc_code_then_the_connection_closes(
    h2: Harness, frames: bytes, opened: bool | str, code: int
) -> None:
    if opened:
        flags = 0 if opened == "open-unended" else w.END_HEADERS
        h2.send(h2.headers(1, call_headers(), flags))
    h2.send(frames)
    written = h2.frames()
    assert written and written[-1][0] == w.GOAWAY, written
    assert goaway_code(written[-1]) == code, written[-1]
    assert h2.transport.closed


# --- stream errors: RST_STREAM on that call; the next call on the connection is answered ----------

_STREAM_ERRORS = {
    "data-after-end-stream": (w.frame(w.DATA, 0, 1, b"late"), w.STREAM_CLOSED),
    "headers-after-end-stream": (None, w.STREAM_CLOSED),
    "stream-window-update-of-0": (w.window_update(1, 0), w.PROTOCOL_ERROR),
    "stream-window-above-2^31-1": (w.window_update(1, 2**31 - 1), w.FLOW_CONTROL_ERROR),
    "priority-of-4-bytes": (w.frame(w.PRIORITY, 0, 1, b"\x00\x00\x00\x03"), w.FRAME_SIZE_ERROR),
}


@pytest.mark.parametrize(("frame", "code"), _STREAM_ERRORS.values(), ids=_STREAM_ERRORS)
def test_a_stream_error_resets_that_call_alone_and_the_connection_serves_on(
    h2: Harness, frame: bytes | None, code: int
) -> None:
    call = h2.call(1, MESSAGE)  # encoded first: the HPACK table follows the order on the wire
    frame = frame if frame is not None else h2.headers(1, [("x-late", "1")], w.END_HEADERS | w.END_STREAM)
    h2.send(call + frame)  # one read: the error comes before the call is answered
    written = h2.frames()
    assert [(f[0], f[2], rst_code(f)) for f in written] == [(w.RST_STREAM, 1, code)]
    h2.send(h2.call(3, MESSAGE))
    _assert_answered(h2.frames(), 3)


def test_stream_errors_provoked_in_a_loop_spend_the_reset_budget_and_end_the_connection(
    h2: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(h2_control, "RESET_RATE", 0.0)  # no refill while the test runs: an exact count
    frames = [  # "MadeYouReset": calls the server itself must reset, twice the budget of them
        h2.call(stream, MESSAGE) + w.window_update(stream, 0)
        for stream in range(1, 4 * h2_control.RESET_BURST, 2)
    ]
    h2.send(*frames)
    written = h2.frames()
    assert written[-1][0] == w.GOAWAY and goaway_code(written[-1]) == w.ENHANCE_YOUR_CALM
    assert len([f for f in written if f[0] == w.RST_STREAM]) == h2_control.RESET_BURST
    assert h2.transport.closed


# --- what clients may legally send ----------------------------------------------------------------


def test_padded_and_prioritised_headers_and_padded_data_are_read(h2: Harness) -> None:
    block = h2.encoder.encode(call_headers())
    priority = b"\x00\x00\x00\x00\x10"  # depends on stream 0, weight 17
    headers = bytes((3,)) + priority + block + b"\x00" * 3
    data = bytes((7,)) + MESSAGE + b"\x00" * 7
    h2.send(
        w.frame(w.HEADERS, w.END_HEADERS | w.PADDED | w.PRIORITY_FLAG, 1, headers),
        w.frame(w.DATA, w.END_STREAM | w.PADDED, 1, data),
    )
    _assert_answered(h2.frames(), 1)


def test_a_header_block_split_over_continuation_frames_is_read(h2: Harness) -> None:
    block = h2.encoder.encode(call_headers())
    thirds = [
        block[: len(block) // 3],
        block[len(block) // 3 : 2 * len(block) // 3],
        block[2 * len(block) // 3 :],
    ]
    h2.send(
        w.frame(w.HEADERS, 0, 1, thirds[0]),
        w.frame(w.CONTINUATION, 0, 1, thirds[1]),
        w.frame(w.CONTINUATION, w.END_HEADERS, 1, thirds[2]),
        w.frame(w.DATA, w.END_STREAM, 1, MESSAGE),
    )
    _assert_answered(h2.frames(), 1)


def test_a_call_ended_by_the_clients_trailers_is_answered(h2: Harness) -> None:
    h2.send(
        h2.headers(1, call_headers()),
        w.frame(w.DATA, 0, 1, MESSAGE),
        h2.headers(1, [("x-trailer", "yes")], w.END_HEADERS | w.END_STREAM),
    )
    _assert_answered(h2.frames(), 1)


def test_unknown_frames_priorities_and_the_clients_goaway_are_ignored_and_the_call_answered(
    h2: Harness,
) -> None:
    h2.send(
        w.frame(0xF0, 0xFF, 1, b"an extension frame"),
        h2.headers(1, call_headers()),
        w.frame(w.PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10"),
        w.frame(w.GOAWAY, 0, 0, b"\x00\x00\x00\x01\x00\x00\x00\x00"),  # no new calls from the client
        w.frame(w.DATA, w.END_STREAM, 1, MESSAGE),
    )
    _assert_answered(h2.frames(), 1)


def test_a_connection_arriving_one_byte_at_a_time_is_served() -> None:
    h2 = Harness(preface=False)
    try:
        h2.send(w.PREFACE, w.settings_frame({}), h2.call(1, MESSAGE), chunk=1)
        _assert_answered(h2.frames(), 1)
    finally:
        h2.close()


def test_answers_keep_within_the_clients_windows_and_frame_size(h2: Harness) -> None:
    x = np.random.default_rng(0).standard_normal((7_000, 3)).astype(np.float32)  # an 84 KB answer
    message = grpc_message(doubling_request(x).SerializeToString())
    h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 1000}), h2.call(1, message))
    window, connection_window, body, written = 1000, w.DEFAULT_WINDOW, b"", h2.frames()
    for _ in range(1000):
        data = [f for f in written if f[0] == w.DATA]
        for frame in data:
            assert len(frame[3]) <= min(window, connection_window, w.DEFAULT_FRAME_SIZE)
            window -= len(frame[3])
            connection_window -= len(frame[3])
            body += frame[3]
        if any(f[0] == w.HEADERS and f[1] & w.END_STREAM for f in written):
            break
        assert data, "the server stopped with window left" if window > 0 else "blocked: grant more"
        grant = 30_000 if len(body) % 2 else 700  # grants of different sizes, on both windows
        h2.send(w.window_update(1, grant), w.window_update(0, grant))
        window, connection_window, written = window + grant, connection_window + grant, h2.frames()
    reply = service_pb2.ModelInferResponse.FromString(body[5:])
    np.testing.assert_array_equal(np.frombuffer(reply.raw_output_contents[0], np.float32), (x * 2).ravel())


def test_a_window_shrunk_to_zero_by_settings_waits_for_a_grant(h2: Harness) -> None:
    h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 0}), h2.call(1, MESSAGE))
    written = h2.frames()
    assert [f[0] for f in written] == [w.SETTINGS, w.HEADERS]  # the ack, then headers only: no window
    h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 65_535}))  # the delta reaches the waiting call
    _assert_answered(written + h2.frames(), 1)


def test_an_answer_waiting_on_its_own_window_does_not_hold_up_the_others(h2: Harness) -> None:
    """Answers wait in two lines: those with window of their own wait for the connection's, in order;
    those without are parked until the client grants them some, and the others go past them."""
    h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 0}), h2.call(1, MESSAGE), h2.call(3, MESSAGE))
    first = h2.frames()
    assert [f[0] for f in first] == [w.SETTINGS, w.HEADERS, w.HEADERS]  # both wait
    assert set(h2.connection.parked) == {1, 3} and not h2.connection.blocked
    h2.send(w.window_update(3, 1 << 16))
    _assert_answered(first + h2.frames(), 3)
    assert set(h2.connection.parked) == {1}
    grants = []
    for _ in range(10):  # a byte at a time: each grant sends that byte
        h2.send(w.window_update(1, 1))
        grants.append(h2.frames())
    assert [[(f[0], len(f[3])) for f in frames] for frames in grants] == [[(w.DATA, 1)]] * 10
    h2.send(w.window_update(1, 1 << 16))
    _assert_answered(first + sum(grants, []) + h2.frames(), 1)
    assert not h2.connection.parked and not h2.connection.calls


def test_answers_move_between_waiting_lines_as_the_initial_window_changes(h2: Harness) -> None:
    """An answer larger than the connection's window waits for it; the client's SETTINGS then shut and
    reopen every call's window, and the answer leaves whole once both windows allow."""
    x = np.random.default_rng(1).standard_normal((7_000, 3)).astype(np.float32)  # 84 KB
    message = grpc_message(doubling_request(x).SerializeToString())
    h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 1 << 20}), h2.call(1, message))
    first = h2.frames()
    assert set(h2.connection.blocked) == {1}  # the connection's 65 535 bytes spent
    h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 0}))  # its own window now below zero
    assert set(h2.connection.parked) == {1} and not h2.connection.blocked
    h2.send(w.window_update(0, 1 << 20))
    shut = h2.frames()
    assert not [f for f in shut if f[0] == w.DATA]  # the connection's window alone is not enough
    h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 1 << 20}))
    _, body, trailers = answer(first + shut + h2.frames(), 1)
    assert trailers["grpc-status"] == "0" and not h2.connection.calls
    reply = service_pb2.ModelInferResponse.FromString(body)
    np.testing.assert_array_equal(np.frombuffer(reply.raw_output_contents[0], np.float32), (x * 2).ravel())


def test_changes_of_the_initial_window_are_budgeted(h2: Harness) -> None:
    """Each change walks the connection's calls, so changes past the budget end the connection with
    ENHANCE_YOUR_CALM; a setting sent again unchanged costs nothing and is not counted."""
    h2.send(w.settings_frame({w.INITIAL_WINDOW_SIZE: 0}) * 1000)
    assert not h2.transport.closed
    flips = [
        w.settings_frame({w.INITIAL_WINDOW_SIZE: size}) for size in (1, 0)
    ] * h2_control.WINDOW_CHANGE_BURST
    h2.send(*flips)
    goaway = [f for f in h2.frames() if f[0] == w.GOAWAY]
    assert h2.transport.closed and goaway_code(goaway[0]) == w.ENHANCE_YOUR_CALM


def test_the_clients_header_table_size_is_acknowledged_in_the_next_header_block(h2: Harness) -> None:
    h2.send(w.settings_frame({w.HEADER_TABLE_SIZE: 0}), h2.call(1, MESSAGE))
    first_block = next(f for f in h2.frames() if f[0] == w.HEADERS)[3]
    assert first_block[0] == 0x20  # a dynamic table size update to 0
    decoder = hpack.Decoder()
    decoder.header_table_size = 0  # what the client's setting allows
    assert dict(decoder.decode(first_block))[":status"] == "200"


@pytest.mark.parametrize(
    ("body", "extra", "status", "fragment"),
    [
        (b"", {}, "13", "no request message"),
        (MESSAGE + MESSAGE, {}, "13", "exactly one request message"),
        (grpc_message(b"\xff\xff"), {}, "13", "cannot parse"),
        (grpc_message(b"x", compressed=True), {"grpc_encoding": "br"}, "12", "br"),
        (grpc_message(b"not gzip", compressed=True), {"grpc_encoding": "gzip"}, "13", "decompress"),
    ],
    ids=["no-message", "two-messages", "not-protobuf", "unknown-compression", "corrupt-gzip"],
)
def test_a_malformed_call_gets_grpcs_status_and_the_next_is_answered(
    h2: Harness, body: bytes, extra: dict[str, str], status: str, fragment: str
) -> None:
    h2.send(h2.call(1, body, **extra))
    got, message = _status(h2.frames(), 1)
    assert got == status and fragment in message, (got, message)
    h2.send(h2.call(3, grpc_message(gzip.compress(MESSAGE[5:]), compressed=True), grpc_encoding="gzip"))
    _assert_answered(h2.frames(), 3)


def _corrupt_near_its_end(data: bytes) -> bytes:
    at = len(data) - 100  # far past the first MiB of what it inflates to: found by the thread
    return data[:at] + bytes(b ^ 0xFF for b in data[at : at + 8]) + data[at + 8 :]


@pytest.mark.parametrize(
    ("compressed", "status", "fragment"),
    [
        (gzip.compress(bytes(3 << 20)), "8", "Decompressed message larger than max"),
        (
            _corrupt_near_its_end(gzip.compress(np.random.default_rng(0).bytes(1 << 19) + bytes(1 << 20))),
            "13",
            "decompress",
        ),
        (gzip.compress(b"\xff" * (3 << 19)), "13", "cannot parse"),
    ],
    ids=["over-the-limit", "corrupt", "not-protobuf"],
)
def test_a_message_inflated_in_a_thread_ends_with_the_status_one_inflated_on_the_loop_would(
    compressed: bytes, status: str, fragment: str
) -> None:
    """Messages inflating past what the event loop takes (1 MiB) are inflated in a thread: what goes
    wrong there ends the call as it would on the loop, and the connection serves on."""
    h2 = Harness(max_message_bytes=2 << 20)
    try:
        h2.send(h2.call(1, grpc_message(compressed, compressed=True), grpc_encoding="gzip"))
        got, message = _status(h2.frames(), 1)
        assert got == status and fragment in message, (got, message)
        h2.send(h2.call(3, MESSAGE))
        _assert_answered(h2.frames(), 3)
    finally:
        h2.close()


def test_a_get_is_405_and_a_call_past_the_stream_limit_is_refused(h2: Harness) -> None:
    h2.send(
        h2.headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "http")], w.END_HEADERS | w.END_STREAM)
    )
    assert answer(h2.frames(), 1)[2][":status"] == "405"
    opened = b"".join(h2.headers(s, call_headers()) for s in range(3, 3 + 2 * h2_requests.MAX_STREAMS, 2))
    h2.send(opened + h2.headers(3 + 2 * h2_requests.MAX_STREAMS, call_headers()))
    written = h2.frames()
    assert [(f[2], rst_code(f)) for f in written] == [(3 + 2 * h2_requests.MAX_STREAMS, w.REFUSED_STREAM)]


# --- generated frame sequences ----------------------------------------------------------------------

_FLAGS = st.sampled_from(
    [0, w.END_STREAM, w.END_HEADERS, w.END_STREAM | w.END_HEADERS, w.PADDED, w.PRIORITY_FLAG]
)
_STREAMS = st.sampled_from([0, 1, 1, 3, 3, 5, 2]) | st.integers(0, 2**31 - 1)
_HEADER_BLOCK = st.sampled_from(
    [
        hpack.Encoder().encode(call_headers()),
        hpack.Encoder().encode(call_headers(grpc_encoding="gzip")),
        hpack.Encoder().encode(call_headers(MODEL_STREAM_INFER)),  # a stream: each message as it completes
    ]
) | st.binary(max_size=24)
_SETTINGS = st.lists(st.tuples(st.integers(0, 8), st.integers(0, 2**32 - 1)), max_size=3).map(
    lambda pairs: b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in pairs)
)


@st.composite
def _frame(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(
            [
                w.DATA,
                w.HEADERS,
                w.HEADERS,
                w.RST_STREAM,
                w.SETTINGS,
                w.PING,
                w.PRIORITY,
                w.WINDOW_UPDATE,
                w.CONTINUATION,
                w.GOAWAY,
                w.PUSH_PROMISE,
                0x0C,
            ]
        )
    )
    payload = {
        w.DATA: st.sampled_from([MESSAGE, MESSAGE[:9], b"", bytes(200)]) | st.binary(max_size=16),
        w.HEADERS: _HEADER_BLOCK,
        w.CONTINUATION: _HEADER_BLOCK,
        w.SETTINGS: _SETTINGS,
        w.WINDOW_UPDATE: st.integers(0, 2**32 - 1).map(lambda n: n.to_bytes(4, "big"))
        | st.binary(max_size=5),
    }.get(kind, st.binary(max_size=12))
    return w.frame(kind, draw(_FLAGS), draw(_STREAMS), draw(payload))


@wire_fuzz_settings(400)
@given(
    frames=st.lists(_frame(), min_size=1, max_size=10),
    chunk=st.sampled_from([0, 1, 5, 64]),
    later=st.sampled_from([0.0, 0.0, 20.0, 40.0]),  # then the clock moves: past the read timeout (30 s)
    budget=st.sampled_from([None, 64, 1 << 20]),  # request bytes the server may hold
)
def test_generated_frame_sequences_are_served_or_refused_with_goaway_never_raised(
    frames: list[bytes], chunk: int, later: float, budget: int | None
) -> None:
    h2 = Harness(budget=None if budget is None else BodyBudget(budget))
    try:
        h2.send(*frames, chunk=chunk)  # fails on any exception out of the server or its tasks
        if later:
            h2.advance(later)  # the watches' timers run (and fail the test if they raise)
        connection = h2.connection
        if not h2.transport.closed:  # the waiting lines only ever hold open calls, each in one
            assert set(connection.partial) <= set(connection.calls)
            assert set(connection.blocked) | set(connection.parked) <= set(connection.calls)
            assert not set(connection.blocked) & set(connection.parked)
        written, rest = parse_frames(bytes(h2.transport.written))
        assert not rest
        goaways = [i for i, f in enumerate(written) if f[0] == w.GOAWAY]
        if h2.transport.closed and goaways:
            assert goaways == [len(written) - 1]  # nothing after the GOAWAY
        for kind, _, stream, _ in written:
            assert kind in (w.SETTINGS, w.HEADERS, w.DATA, w.RST_STREAM, w.PING, w.GOAWAY, w.WINDOW_UPDATE)
            assert stream & 1 or kind in (w.SETTINGS, w.PING, w.GOAWAY, w.WINDOW_UPDATE)
    finally:
        h2.close()
    if budget is not None:
        assert h2.server.budget.used == 0  # every byte held given back once the connection is gone
