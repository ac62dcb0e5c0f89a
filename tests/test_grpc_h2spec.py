"""Kiln's gRPC server against h2spec's cases (github.com/summerwind/h2spec: http2/*.go, hpack/*.go and
generic/*.go), those tests/test_grpc_h2_conformance.py does not hold already. Each case is played as
h2spec plays it, frame by frame on one in-memory connection (tests/h2_client.py), its steps sent one
read at a time where h2spec waits between them. h2spec's requests are ``GET /``, which a gRPC server
answers 405 at once: where a case needs a stream still open, it opens a gRPC call instead; the
connection and stream error rules are the same for both."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import pairwise

import pytest

from serving.protocol import h2_wire as w
from serving.protocol.limits import BodyBudget
from tests.h2_client import MESSAGE, Harness, answer, call_headers, connected, goaway_code, rst_code

GET = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "localhost:8001")]
POST = [(":method", "POST"), (":scheme", "http"), (":path", "/"), (":authority", "localhost:8001")]
ENDED = w.END_HEADERS | w.END_STREAM
PING = w.frame(w.PING, 0, 0, b"h2spec!!")

Steps = Callable[[Harness], list[bytes]]  # the frames of each read, built on the connection's encoder


@pytest.fixture
def h2() -> Iterator[Harness]:
    with connected() as harness:
        yield harness


def _play(h2: Harness, steps: Steps) -> list:
    """Send each step as a read of its own (the calls it starts finished before the next)."""
    written = []
    for step in steps(h2):
        h2.send(step)
        written += h2.frames()
    return written


def _headers(h2: Harness, stream: int, headers: list[tuple[str, str]], flags: int = ENDED) -> bytes:
    return h2.headers(stream, headers, flags)


def _grpc(h2: Harness, stream: int, flags: int = w.END_HEADERS, **extra: str) -> bytes:
    """A gRPC call's HEADERS: the stream stays open for what the case sends on it next."""
    return h2.headers(stream, call_headers(**extra), flags)


def _with_fields(h2: Harness, representation: bytes) -> bytes:
    """h2spec's HPACK cases: a GET's header block with ``representation`` appended."""
    return w.frame(w.HEADERS, ENDED, 1, h2.encoder.encode(GET) + representation)


def _extra(*fields: tuple[str, str]) -> Steps:
    """A gRPC call whose headers carry ``fields`` after its own."""
    return lambda h2: [_headers(h2, 1, call_headers() + list(fields))]


# --- connection errors: GOAWAY with the case's code, then the connection closes --------------------

_CONNECTION_ERRORS = [
    # (section, description, steps, the GOAWAY's code)
    ("5.1", "idle: DATA", lambda h2: [w.frame(w.DATA, w.END_STREAM, 1, b"test")], w.PROTOCOL_ERROR),
    (
        "5.1",
        "closed: HEADERS on a stream both ends closed",
        lambda h2: [_headers(h2, 1, GET), _headers(h2, 1, GET)],
        w.STREAM_CLOSED,
    ),
    (
        "5.1",
        "closed: HEADERS after the client's RST_STREAM",
        lambda h2: [_grpc(h2, 1), w.rst_stream(1, w.CANCEL), _headers(h2, 1, GET)],
        w.STREAM_CLOSED,
    ),
    ("5.1.1", "an even-numbered stream", lambda h2: [_headers(h2, 2, GET)], w.PROTOCOL_ERROR),
    (
        "5.1.1",
        "a stream numerically smaller than the previous",
        lambda h2: [_headers(h2, 5, GET), _headers(h2, 3, GET)],
        w.PROTOCOL_ERROR,
    ),
    (
        "5.3.1",
        "PRIORITY on an idle stream depending on itself",
        lambda h2: [w.frame(w.PRIORITY, 0, 1, b"\x00\x00\x00\x01\xff")],
        w.PROTOCOL_ERROR,
    ),
    (
        "5.5",
        "an unknown frame in the middle of a header block",
        lambda h2: [_headers(h2, 1, GET, w.END_STREAM) + w.frame(0x16, 0, 0, bytes(8))],
        w.PROTOCOL_ERROR,
    ),
    ("6.1", "DATA on stream 0", lambda h2: [w.frame(w.DATA, w.END_STREAM, 0, b"test")], w.PROTOCOL_ERROR),
    (
        "6.1",
        "DATA with a pad length past the frame, on a stream answered 415 already",
        lambda h2: [_headers(h2, 1, POST, w.END_HEADERS), w.frame(w.DATA, w.PADDED, 1, b"\x06Test")],
        w.PROTOCOL_ERROR,
    ),
    ("6.2", "HEADERS on stream 0", lambda h2: [_headers(h2, 0, GET)], w.PROTOCOL_ERROR),
    (
        "6.3",
        "a 4-byte PRIORITY on a closed stream",
        lambda h2: [_headers(h2, 1, GET), w.frame(w.PRIORITY, 0, 1, b"\x80\x00\x00\x01")],
        w.FRAME_SIZE_ERROR,
    ),
    (
        "6.5.2",
        "SETTINGS_MAX_FRAME_SIZE 2^24",
        lambda h2: [w.settings_frame({w.MAX_FRAME_SIZE: 1 << 24})],
        w.PROTOCOL_ERROR,
    ),
    ("6.8", "GOAWAY on stream 1", lambda h2: [w.frame(w.GOAWAY, 0, 1, bytes(8))], w.PROTOCOL_ERROR),
    ("4.2", "a 4-byte GOAWAY", lambda h2: [w.frame(w.GOAWAY, 0, 0, bytes(4))], w.FRAME_SIZE_ERROR),
    (
        "6.9",
        "a 3-byte WINDOW_UPDATE",
        lambda h2: [w.frame(w.WINDOW_UPDATE, 0, 0, b"\x00\x00\x01")],
        w.FRAME_SIZE_ERROR,
    ),
    (
        "4.3",
        "a literal without its name",
        lambda h2: [w.frame(w.HEADERS, ENDED, 1, b"\x40")],
        w.COMPRESSION_ERROR,
    ),
    (
        "hpack 2.3.3",
        "a literal's name index past the table",
        lambda h2: [_with_fields(h2, b"\x7f\x07\x00")],
        w.COMPRESSION_ERROR,
    ),
    (
        "hpack 4.2",
        "a table size update after a field",
        lambda h2: [_with_fields(h2, b"\x21")],
        w.COMPRESSION_ERROR,
    ),
    (
        "hpack 5.2",
        "Huffman padding longer than 7 bits",
        lambda h2: [_with_fields(h2, b"\x00\x85\xf2\xb2\x4a\x84\xff\x84\x49\x50\x9f\xff")],
        w.COMPRESSION_ERROR,
    ),
    (
        "hpack 5.2",
        "Huffman padded with zeros",
        lambda h2: [_with_fields(h2, b"\x00\x85\xf2\xb2\x4a\x84\xff\x83\x49\x50\x90")],
        w.COMPRESSION_ERROR,
    ),
    (
        "hpack 5.2",
        "Huffman with the EOS symbol",
        lambda h2: [_with_fields(h2, b"\x00\x85\xf2\xb2\x4a\x84\xff\x87\x49\x51\xff\xff\xff\xfa\x7f")],
        w.COMPRESSION_ERROR,
    ),
    ("hpack 6.1", "an indexed field of index 0", lambda h2: [_with_fields(h2, b"\x80")], w.COMPRESSION_ERROR),
]


@pytest.mark.parametrize(
    ("section", "description", "steps", "code"), _CONNECTION_ERRORS, ids=[c[1] for c in _CONNECTION_ERRORS]
)
def test_h2specs_connection_errors_end_the_connection_with_goaway_and_the_cases_code(
    h2: Harness, section: str, description: str, steps: Steps, code: int
) -> None:
    written = _play(h2, steps)
    assert written and written[-1][0] == w.GOAWAY, written
    assert goaway_code(written[-1]) == code, (section, written[-1])
    assert not [f for f in written if f[0] == w.RST_STREAM and rst_code(f)], written  # no stream error first
    assert h2.transport.closed


# --- stream errors: RST_STREAM on that stream with the case's code; the next call is answered ------


def _malformed(*fields: tuple[str, str]) -> Steps:
    """A gRPC call's header block made of ``fields`` alone."""
    return lambda h2: [_headers(h2, 1, list(fields))]


_METHOD, _SCHEME, _PATH, _TYPE = call_headers()
_PROTOCOL = [(1, w.PROTOCOL_ERROR)]
_STREAM_ERRORS = [
    # (section, description, steps, the RST_STREAM frames' (stream, code), in order)
    (
        "5.1",
        "closed: DATA after the call's answer",
        lambda h2: [_grpc(h2, 1, ENDED), w.frame(w.DATA, w.END_STREAM, 1, b"test")],
        [(1, w.STREAM_CLOSED)],
    ),
    (
        "5.1",
        "closed: DATA after the client's RST_STREAM",
        lambda h2: [_grpc(h2, 1), w.rst_stream(1, w.CANCEL), w.frame(w.DATA, w.END_STREAM, 1, b"test")],
        [(1, w.STREAM_CLOSED)],
    ),
    (
        "6.1",
        "DATA on a stream whose client ended its half (answered 415)",
        lambda h2: [_headers(h2, 1, POST), w.frame(w.DATA, w.END_STREAM, 1, b"test")],
        [(1, w.STREAM_CLOSED)],
    ),
    (
        "5.3.1",
        "HEADERS depending on its own stream",
        lambda h2: [
            w.frame(w.HEADERS, ENDED | w.PRIORITY_FLAG, 1, b"\x00\x00\x00\x01\xff" + h2.encoder.encode(GET))
        ],
        [(1, w.PROTOCOL_ERROR)],
    ),
    (
        "5.3.1",
        "PRIORITY on an open call depending on itself",
        lambda h2: [_grpc(h2, 1) + w.frame(w.PRIORITY, 0, 1, b"\x00\x00\x00\x01\xff")],
        [(1, w.PROTOCOL_ERROR)],
    ),
    (
        "8.1",
        "a second HEADERS without END_STREAM",
        lambda h2: [
            _grpc(h2, 1),
            w.frame(w.DATA, 0, 1, b"test"),
            _headers(h2, 1, [("x-test", "ok")], w.END_HEADERS),
        ],
        [(1, w.PROTOCOL_ERROR)],
    ),
    ("8.1.2", "a field name in uppercase", _extra(("X-TEST", "ok")), [(1, w.PROTOCOL_ERROR)]),
    ("8.2.1", "a field value with a line feed", _extra(("x-test", "a\nb")), [(1, w.PROTOCOL_ERROR)]),
    ("8.1.2.1", "an unknown pseudo-header", _extra((":test", "ok")), [(1, w.PROTOCOL_ERROR)]),
    ("8.1.2.1", "a response's pseudo-header", _extra((":status", "200")), [(1, w.PROTOCOL_ERROR)]),
    (
        "8.1.2.1",
        "a pseudo-header in trailers",
        lambda h2: [_grpc(h2, 1), w.frame(w.DATA, 0, 1, MESSAGE), _headers(h2, 1, [(":method", "POST")])],
        [(1, w.PROTOCOL_ERROR)],
    ),
    (
        "8.1.2.1",
        "a pseudo-header after a regular field",
        _malformed(_METHOD, _SCHEME, _TYPE, _PATH),
        [(1, w.PROTOCOL_ERROR)],
    ),
    ("8.1.2.2", "a connection-specific field", _extra(("connection", "keep-alive")), [(1, w.PROTOCOL_ERROR)]),
    ("8.1.2.2", "TE other than trailers", _extra(("te", "trailers, deflate")), [(1, w.PROTOCOL_ERROR)]),
    (
        "8.1.2.3",
        "an empty :path",
        _malformed(_METHOD, _SCHEME, (":path", ""), _TYPE),
        [(1, w.PROTOCOL_ERROR)],
    ),
    ("8.1.2.3", "no :method", _malformed(_SCHEME, _PATH, _TYPE), [(1, w.PROTOCOL_ERROR)]),
    ("8.1.2.3", "no :scheme", _malformed(_METHOD, _PATH, _TYPE), [(1, w.PROTOCOL_ERROR)]),
    ("8.1.2.3", "no :path", _malformed(_METHOD, _SCHEME, _TYPE), [(1, w.PROTOCOL_ERROR)]),
    ("8.1.2.3", "a second :method", _malformed(_METHOD, _METHOD, _SCHEME, _PATH, _TYPE), _PROTOCOL),
    ("8.1.2.3", "a second :scheme", _malformed(_METHOD, _SCHEME, _SCHEME, _PATH, _TYPE), _PROTOCOL),
    ("8.1.2.3", "a second :path", _malformed(_METHOD, _SCHEME, _PATH, _PATH, _TYPE), _PROTOCOL),
    (
        "8.1.2.6",
        "content-length other than the DATA's length",
        lambda h2: [_grpc(h2, 1, content_length="1") + w.frame(w.DATA, w.END_STREAM, 1, MESSAGE)],
        [(1, w.PROTOCOL_ERROR)],
    ),
    (
        "8.1.2.6",
        "content-length other than the sum of the DATA frames' lengths",
        lambda h2: [
            _grpc(h2, 1, content_length="1"),
            w.frame(w.DATA, 0, 1, MESSAGE[:5]),
            w.frame(w.DATA, w.END_STREAM, 1, MESSAGE[5:]),
        ],
        [(1, w.PROTOCOL_ERROR)],
    ),
    (
        "8.1.2.6",
        "content-length above the DATA, the call ended by trailers",
        lambda h2: [
            _grpc(h2, 1, content_length=str(len(MESSAGE) + 1)),
            w.frame(w.DATA, 0, 1, MESSAGE),
            _headers(h2, 1, [("x-trailer", "1")]),
        ],
        [(1, w.PROTOCOL_ERROR)],
    ),
    (
        "8.1.2.6",
        "a content-length that is not a number",
        lambda h2: [_grpc(h2, 1, content_length="5" * 5000)],
        [(1, w.PROTOCOL_ERROR)],
    ),
]


@pytest.mark.parametrize(
    ("section", "description", "steps", "resets"), _STREAM_ERRORS, ids=[c[1] for c in _STREAM_ERRORS]
)
def test_h2specs_stream_errors_reset_that_stream_alone_and_the_connection_serves_on(
    h2: Harness, section: str, description: str, steps: Steps, resets: list[tuple[int, int]]
) -> None:
    written = _play(h2, steps)
    errors = [(f[2], rst_code(f)) for f in written if f[0] in (w.RST_STREAM, w.GOAWAY)]
    assert errors == resets and not [f for f in written if f[0] == w.GOAWAY], (section, written)
    h2.send(h2.call(101, MESSAGE))
    _, message, trailers = answer(h2.frames(), 101)
    assert trailers["grpc-status"] == "0" and message, trailers


# --- what the server must accept: each case ends with a PING, answered, and no error ---------------

_ACCEPTED = [
    # (section, description, steps: the last PING's ack must come back, and nothing else amiss)
    ("4.1", "a frame with undefined flags", lambda h2: [w.frame(w.PING, 0x16, 0, b"h2spec!!")]),
    ("4.1", "a frame with the reserved bit set", lambda h2: [w.frame(w.PING, 0, 1 << 31, b"h2spec!!")]),
    ("6.5", "a SETTINGS of an unknown identifier", lambda h2: [w.settings_frame({0xFF: 1}) + PING]),
    ("7", "GOAWAY with an unknown error code", lambda h2: [w.goaway(0, 0xFF) + PING]),
    ("7", "RST_STREAM with an unknown error code", lambda h2: [_grpc(h2, 1) + w.rst_stream(1, 0xFF) + PING]),
    (
        "generic 2",
        "WINDOW_UPDATE, PRIORITY and RST_STREAM on a stream both ends closed",
        lambda h2: [
            _headers(h2, 1, GET),
            w.window_update(1, 1)
            + w.frame(w.PRIORITY, 0, 1, b"\x00\x00\x00\x00\xff")
            + w.rst_stream(1, 8)
            + PING,
        ],
    ),
    (
        "generic 3.3",
        "PRIORITY on an idle stream, then HEADERS on a lower one",
        lambda h2: [w.frame(w.PRIORITY, 0, 3, b"\x00\x00\x00\x00\xff") + _headers(h2, 1, GET) + PING],
    ),
    (
        "generic 5",
        "two table size updates at the start of a block",
        lambda h2: [w.frame(w.HEADERS, ENDED, 1, b"\x3f\x61\x3f\xe1\x1f" + h2.encoder.encode(GET)) + PING],
    ),
    (
        "5.1",
        "DATA and trailers late on a call the server answered before its client had finished",
        lambda h2: [
            _grpc(h2, 1, path="/inference.GRPCInferenceService/NoSuchMethod"),
            w.frame(w.DATA, 0, 1, MESSAGE) + _headers(h2, 1, [("x-trailer", "1")]) + PING,
        ],
    ),
]


@pytest.mark.parametrize(("section", "description", "steps"), _ACCEPTED, ids=[c[1] for c in _ACCEPTED])
def test_h2specs_legal_frames_are_accepted_and_the_connection_answers_a_ping(
    h2: Harness, section: str, description: str, steps: Steps
) -> None:
    written = _play(h2, steps)
    assert written[-1] == (w.PING, w.ACK, 0, b"h2spec!!"), (section, written)
    assert not [f for f in written if f[0] == w.GOAWAY or (f[0] == w.RST_STREAM and rst_code(f))], written
    assert not h2.transport.closed


def test_a_stream_errors_late_frames_are_dropped_and_streams_closed_long_ago_are_forgotten(
    h2: Harness,
) -> None:
    """After a stream error the client may still send on that stream: dropped, not reset again. The
    record of closed streams is bounded: a stream closed long ago reads as never opened."""
    h2.send(_grpc(h2, 1) + w.window_update(1, 0))  # a stream error: RST_STREAM PROTOCOL_ERROR
    h2.send(w.frame(w.DATA, 0, 1, MESSAGE) + PING)
    assert [(f[0], f[2]) for f in h2.frames()] == [(w.RST_STREAM, 1), (w.PING, 0)]
    remembered = h2.connection.closed_streams.size
    h2.send(*(h2.call(stream, MESSAGE) for stream in range(3, 3 + 4 * remembered, 2)))  # 2 × remembered
    assert (
        len(h2.connection.closed_streams.recent) + len(h2.connection.closed_streams.older) <= 2 * remembered
    )
    assert h2.connection.closed_streams.early(1) is None


@pytest.mark.parametrize("pieces", [1, 3], ids=["whole", "in-pieces"])
def test_data_on_a_call_its_client_had_ended_is_reset_once_however_it_arrives(pieces: int) -> None:
    """h2spec 5.1 "closed: DATA": a frame arriving in pieces (dropped as it arrives, with a budget)
    is answered as one arriving whole, and a second frame on that stream is dropped."""
    data = w.frame(w.DATA, 0, 1, bytes(30_000))
    cuts = [len(data) * i // pieces for i in range(pieces + 1)]
    with connected(budget=BodyBudget(1 << 20)) as h2:
        h2.send(_grpc(h2, 1, ENDED))  # answered at once: the call carried no message
        for start, end in pairwise(cuts):
            h2.send(data[start:end])
        h2.send(data + PING)
        errors = [(f[2], rst_code(f)) for f in h2.frames() if f[0] in (w.RST_STREAM, w.GOAWAY)]
        assert errors == [(1, w.STREAM_CLOSED)] and not h2.connection.buffer
        assert h2.server.budget.used == 0


def test_late_frames_of_a_stream_closed_long_ago_are_dropped_not_taken_for_the_clients_error() -> None:
    """A busy connection forgot a stream it had answered early after 256 closes while 1 024 calls may be
    open: its late DATA was then reset (each reset spends the connection's budget, whose end is a
    GOAWAY) and late trailers closed the whole connection. Now a forgotten stream's frames are dropped
    unjudged, and a skipped id above the forgotten ones is still the client's error."""
    from serving.protocol.h2_requests import ClosedStreams

    closed = ClosedStreams(size=4)
    for stream in range(1, 21, 2):  # 10 streams closed early: the first ones forgotten
        closed.note(stream, True)
    assert closed.early(1) is None and closed.floor >= 1
    assert not closed.client_closed(1)  # forgotten: dropped
    assert not closed.client_closed(19)  # remembered, closed early: dropped
    closed.note(21, False)
    assert closed.client_closed(21)  # remembered, closed by its client: its error
    assert closed.client_closed(23)  # never opened (skipped), above the floor: its error
    with connected(budget=BodyBudget(1 << 20)) as h2:
        h2.connection.closed_streams = ClosedStreams(size=4)
        for stream in range(1, 21, 2):
            h2.send(_grpc(h2, stream, ENDED))  # each answered at once
        h2.frames()
        assert h2.connection.closed_streams.early(1) is None  # forgotten
        h2.send(w.frame(w.DATA, 0, 1, b"late") + w.frame(w.HEADERS, ENDED, 1, b"") + PING)
        frames = h2.frames()
        assert not [f for f in frames if f[0] in (w.RST_STREAM, w.GOAWAY)], frames
        assert any(f[0] == w.PING for f in frames)  # the connection serves on


def test_fields_judged_well_formed_are_remembered_within_a_bound_and_malformed_ones_never() -> None:
    """Each request's regular fields are judged once (a client repeats them call after call); the
    memory is bounded (a grpc-timeout's value differs at every call), and a malformed field is judged
    malformed every time."""
    for _ in range(2):
        assert w.field_problem(b"x-bad", b"a\r\nb") == "header 'x-bad' has NUL, CR or LF in its value"
        assert w.field_problem(b"Upper", b"v") == "header name b'Upper' is not a lowercase token"
    assert (b"x-bad", b"a\r\nb") not in w._GOOD_FIELDS
    for timeout in range(w.GOOD_FIELDS_MAX + 10):
        assert w.field_problem(b"grpc-timeout", f"{timeout}u".encode()) is None
    assert 0 < len(w._GOOD_FIELDS) <= w.GOOD_FIELDS_MAX
