"""The gateway's HTTP/1.1 server (serving.protocol.http1) read against h11, a reference parser: raw
request bytes, however cut into writes, are answered exactly as many times as h11 sees requests in
them, each framed as it must be (status line, Content-Length or chunked, no body to a HEAD, Connection:
close where the connection ends), or refused (400, 413, 431, 501, 505) and closed after the answers
before the refusal; never a request h11 does not see (one smuggled in a body), never a hang."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field

import h11
import pytest
from fastapi import Request, Response
from hypothesis import assume, given, note
from hypothesis import strategies as st

from serving.protocol.http1 import http_protocol
from serving.protocol.http1_heads import framing_refusal
from tests.repo_fixtures import LiveServer, wire_fuzz_settings
from tests.test_http1_direct import make_app

LEAN = b"/v1/models/m/echo"  # answered by the protocol itself where it can take the request whole
CYCLE = b"/plain"  # the same echo through uvicorn's ASGI cycle
SENTINEL = b"POST /plain?last HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nsentinel"  # ends a stream
# h11 reads whole and keeps open: the last answer, and no answer before it that h11 does not see
REFUSALS = {400, 413, 431, 501, 505}
WAIT_S = 10.0  # a failure bound on an answer that should come at once, never waited out when it does
HEAD_BODY = b"0123456789"


def app_with_echoes():
    app = make_app()

    @app.post("/plain")
    async def plain(request: Request) -> Response:
        return Response(await request.body(), media_type="application/octet-stream")

    @app.api_route("/head", methods=["GET", "HEAD"])
    async def head() -> Response:
        return Response(HEAD_BODY, media_type="text/plain")

    return app


@pytest.fixture(scope="module")
def live():
    protocol = http_protocol()
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn serves with h11, the reference itself")
    with LiveServer(app_with_echoes(), http=protocol) as server:
        yield server


@dataclass
class Seen:
    """What h11 reads in a stream: its requests (method, target, body) and whether it refused the rest."""

    requests: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)
    refused: bool = False
    ends: bool = False  # a request that ends the connection (HTTP/1.0, Connection: close)
    whole: bool = True  # every byte read into requests


def reference(raw: bytes) -> Seen:
    """h11's reading of ``raw`` as a server, each request answered with a 200 so the next may begin."""
    conn, seen = h11.Connection(h11.SERVER), Seen()
    conn.receive_data(raw)
    method = target = None
    body = b""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            seen.refused = True
            return seen
        if event is h11.NEED_DATA or event is h11.PAUSED:
            seen.whole = conn.their_state is h11.IDLE and not conn.trailing_data[0]
            return seen
        if isinstance(event, h11.Request):
            method, target, body = event.method, event.target, b""
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            seen.requests.append((method, target, body))
            conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
            conn.send(h11.EndOfMessage())
            if conn.our_state is h11.MUST_CLOSE:
                seen.ends = True
                return seen
            conn.start_next_cycle()


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


def answers(sock: socket.socket, methods: list[bytes], wanted: int) -> tuple[list[Answer], bool]:
    """Read answers, each framed strictly (interim 1xx skipped), until ``wanted`` have come or the
    gateway closes; (the answers, whether it closed). Fails on a malformed answer or on a hang."""
    data, closed, out = b"", False, []
    deadline = time.monotonic() + WAIT_S
    while True:
        while True:  # every whole answer in what has come
            parsed = _one_answer(data, methods[len(out)] if len(out) < len(methods) else b"GET", closed)
            if parsed is None:
                break
            answer, data = parsed
            if answer.status >= 200:
                out.append(answer)
        ending = bool(out) and out[-1].headers.get(b"connection") == b"close"  # then its close is due
        if (len(out) >= wanted and not ending) or closed:
            assert not (closed and data), f"bytes after the last answer: {data!r}"
            return out, closed
        left = deadline - time.monotonic()
        assert left > 0, f"hang: {len(out)} of {wanted} answers after {WAIT_S} s, then {data!r}"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            chunk = b""
        closed = not chunk
        data += chunk


def _one_answer(data: bytes, method: bytes, closed: bool) -> tuple[Answer, bytes] | None:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.split(b"\r\n")
    version, status, _ = (lines[0] + b" ").split(b" ", 2)
    assert version == b"HTTP/1.1" and status.isdigit(), lines[0]
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        assert colon and name == name.strip(), line
        assert name.lower() not in headers, f"{name!r} twice in {head!r}"
        headers[name.lower()] = value.strip()
    code = int(status)
    if code in REFUSALS and headers.get(b"connection") == b"close":  # the request it refuses may be
        if not closed:  # a HEAD whose method h11 never read: its body, if any, is all that is left
            return None
        assert len(rest) in (0, int(headers[b"content-length"])), (head, rest)
        return Answer(code, headers, rest), b""
    if code < 200 or method == b"HEAD" or code in (204, 304):
        return Answer(code, headers, b""), rest
    if b"transfer-encoding" in headers:
        assert headers[b"transfer-encoding"] == b"chunked" and b"content-length" not in headers, head
        body, at = b"", 0
        while True:
            size_line, sep, _ = rest[at:].partition(b"\r\n")
            if not sep:
                return None
            size = int(size_line, 16)
            at += len(size_line) + 2
            if len(rest) < at + size + 2:
                return None
            if size == 0:
                assert rest[at : at + 2] == b"\r\n"
                return Answer(code, headers, body), rest[at + 2 :]
            body += rest[at : at + size]
            assert rest[at + size : at + size + 2] == b"\r\n"
            at += size + 2
    assert b"content-length" in headers, f"an answer without framing: {head!r}"
    length = int(headers[b"content-length"])
    if len(rest) < length:
        return None
    return Answer(code, headers, rest[:length]), rest[length:]


def exchange(live: LiveServer, writes: list[bytes], methods: list[bytes], wanted: int):
    with socket.create_connection(("127.0.0.1", live.port), timeout=WAIT_S) as sock:
        try:
            for part in writes:
                sock.sendall(part)
        except OSError as exc:  # the gateway closed: only after a refusal, which answers() reads
            print(f"sending stopped: {exc!r}")
        return answers(sock, methods, wanted)


def check(live: LiveServer, writes: list[bytes], refusable: bool = True) -> list[Answer]:
    """The gateway's answers to ``writes`` against h11's reading of them (the module's rules); a
    stream h11 reads whole and keeps open ends with the sentinel, which must be answered last."""
    raw = b"".join(writes)
    seen = reference(raw)
    assert seen.whole or seen.refused or seen.ends, "a stream cut short: no answer can be awaited"
    sentinel = not (seen.refused or seen.ends)
    if sentinel:
        writes, seen.requests = [*writes, SENTINEL], [*seen.requests, (b"POST", b"/plain?last", b"sentinel")]
    methods = [method for method, _, _ in seen.requests]
    got, closed = exchange(live, writes, methods, len(seen.requests) + (not sentinel))  # (or closed)
    served = [a for a in got if a.status not in REFUSALS]
    assert got[: len(served)] == served, f"an answer after a refusal: {got}"
    assert len(served) <= len(seen.requests), f"answered a request h11 does not see: {got}"
    for answer, (method, target, body) in zip(served, seen.requests, strict=False):
        _matches(answer, method, target, body)
    if len(got) > len(served):  # refused: once, after the answers before it, then closed
        assert refusable, f"a valid stream refused: {got}"
        assert closed and len(got) == len(served) + 1, got
        assert got[-1].headers.get(b"connection") == b"close", got[-1]
    elif seen.refused:  # h11 refuses what follows: nothing more answered, the connection closed
        assert closed, got
    else:
        assert len(served) == len(seen.requests), got
        if seen.ends:
            assert closed and got[-1].headers.get(b"connection") == b"close", got
    return got


def _matches(answer: Answer, method: bytes, target: bytes, body: bytes) -> None:
    """The answer a request h11 read must get: each route echoes what h11 read as its body."""
    path = target.split(b"?")[0].removeprefix(b"http://x")
    if path == LEAN:
        assert answer.status == 200 and json.loads(answer.body)["echo"] == body.decode(), answer
    elif path == CYCLE:
        assert answer.status == 200 and answer.body == body, answer
    elif path == b"/head":
        assert answer.status == 200 and answer.headers[b"content-length"] == b"%d" % len(HEAD_BODY)
        assert answer.body == (b"" if method == b"HEAD" else HEAD_BODY), answer
    elif path == b"/other":
        assert (answer.status, answer.body) == (200, b'{"other":true}'), answer


def post(path: bytes, body: bytes, extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    head = b"POST %s HTTP/%s\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n" % (path, version, extra, len(body))
    return head + body


def upgrade_post(path: bytes, body: bytes) -> bytes:
    return post(
        path, body, b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n"
    )


# ---- each divergence found, as a sentence ----------------------------------------------------------


@pytest.mark.parametrize("path", [LEAN, CYCLE])
def test_the_body_of_a_request_proposing_an_upgrade_is_its_body_not_a_smuggled_request(live, path):
    smuggled = b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n"
    got = check(live, [upgrade_post(path, smuggled)], refusable=False)
    assert [a.status for a in got] == [200, 200]  # the upgrade POST (its body echoed) and the sentinel


def test_a_body_of_a_refused_upgrade_arriving_after_its_head_is_still_its_body(live):
    head, body = upgrade_post(LEAN, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n").split(b"\r\n\r\n", 1)
    with socket.create_connection(("127.0.0.1", live.port), timeout=WAIT_S) as sock:
        sock.sendall(head + b"\r\n\r\n")
        sock.sendall(body[:7])
        sock.sendall(body[7:] + SENTINEL)
        got, _ = answers(sock, [b"POST", b"POST"], 2)
    assert json.loads(got[0].body)["echo"] == body.decode()
    assert got[1].body == b"sentinel"


def test_requests_pipelined_after_an_upgrade_not_taken_are_answered_not_dropped(live):
    h2c = b"GET /head HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    h2c += b"HTTP2-Settings: AAMAAABk\r\n\r\n"
    got = check(live, [h2c + h2c + post(CYCLE, b"after")], refusable=False)
    assert [a.status for a in got] == [200] * 4


def test_a_chunked_body_proposing_an_upgrade_is_refused_not_skipped(live):
    raw = b"POST /plain HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
    raw += b"Transfer-Encoding: chunked\r\n\r\n21\r\nGET /other HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", live.port), timeout=WAIT_S) as sock:
        sock.sendall(raw)
        got, closed = answers(sock, [b"POST"], 2)
    assert closed and [a.status for a in got] == [400], got


@pytest.mark.parametrize("line", [b"GET /other HTTP/2.0", b"GET /other"], ids=["2.0", "0.9"])
def test_a_request_line_of_another_http_version_gets_505_and_the_connection_is_closed(live, line):
    with socket.create_connection(("127.0.0.1", live.port), timeout=WAIT_S) as sock:
        sock.sendall(line + b"\r\nHost: x\r\n\r\n" + SENTINEL)
        got, closed = answers(sock, [b"GET", b"POST"], 2)
    assert closed and [a.status for a in got] == [505]
    assert b"is not supported" in got[0].body and got[0].headers[b"connection"] == b"close"


def test_a_grpc_clients_http2_preface_on_the_http_port_gets_505_naming_the_grpc_port(live):
    """HTTP/2 with prior knowledge (what gRPC clients send) was "invalid HTTP request: Pause on
    PRI/Upgrade", a 400 that left the client's user guessing; it is the version this port does not serve."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    with socket.create_connection(("127.0.0.1", live.port), timeout=WAIT_S) as sock:
        sock.sendall(preface)
        got, closed = answers(sock, [b"GET"], 1)
    assert closed and [a.status for a in got] == [505]
    assert b"gRPC port (--grpc-port)" in got[0].body


@pytest.mark.parametrize("hosts", [b"", b"Host: a\r\nHost: b\r\n"], ids=["none", "two"])
def test_an_http_1_1_request_without_exactly_one_host_gets_400(live, hosts):
    got = check(live, [b"GET /other HTTP/1.1\r\n" + hosts + b"\r\n"])
    assert [a.status for a in got] == [400]
    assert b"exactly one Host" in got[0].body


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"chunked, chunked", b"x-custom,chunked"])
def test_a_transfer_coding_besides_chunked_gets_501_not_its_coded_bytes_as_the_body(live, coding):
    raw = b"POST /plain HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: %s\r\n\r\n2\r\nhi\r\n0\r\n\r\n" % coding
    with socket.create_connection(("127.0.0.1", live.port), timeout=WAIT_S) as sock:
        sock.sendall(raw + SENTINEL)
        got, closed = answers(sock, [b"POST", b"POST"], 2)
    assert closed and [a.status for a in got] in ([501], [400]), got


@pytest.mark.parametrize("first", [b"HEAD /head", b"GET /other"])
def test_a_valid_request_before_a_malformed_pipelined_one_is_answered_before_the_400(live, first):
    malformed = b"GET /other HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"  # obs-fold: llhttp refuses it
    got = check(live, [first + b" HTTP/1.1\r\nHost: x\r\n\r\n" + malformed])
    assert [a.status for a in got] == [200, 400]


def test_a_refused_head_request_gets_its_400_without_a_body(live):
    with socket.create_connection(("127.0.0.1", live.port), timeout=WAIT_S) as sock:
        sock.sendall(b"HEAD /head HTTP/1.1\r\nHost: x\r\nX(A: 1\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-length: " in head and body == b""


def test_framing_refusal_reads_versions_hosts_and_codings_as_rfc_9112_does():
    host = [(b"host", b"x")]
    assert framing_refusal("1.1", host) is None
    assert framing_refusal("1.0", []) is None  # HTTP/1.0 needs no Host
    assert framing_refusal("1.1", [*host, (b"transfer-encoding", b" ,Chunked ")]) is None
    assert framing_refusal("2.0", host)[0] == 505
    assert framing_refusal("1.1", [*host, *host])[0] == 400
    assert framing_refusal("1.0", [*host, *host])[0] == 400
    assert framing_refusal("1.1", [*host, (b"transfer-encoding", b"deflate, chunked")])[0] == 501


# ---- the differential fuzz -------------------------------------------------------------------------

SUITE_EXAMPLES = 150
TOKEN = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8).map(str.encode)
BODY = st.binary(max_size=40).map(lambda b: bytes(c % 94 + 32 for c in b))  # printable ASCII
# header lines as they might come, valid or not; each valid one also valid to h11
ODD_HEADERS = st.sampled_from(
    [
        b"X-A: 1\r\n",
        b"X-A:1\r\n",
        b"X-A: 1 \r\n",
        b"X-A : 1\r\n",  # space before the colon
        b"X(A: 1\r\n",  # invalid name character
        b"X-A: a\x00b\r\n",  # NUL in a value
        b"X-A: a\rb\r\n",  # a bare CR in a value
        b"X-A: a\r\n b\r\n",  # obs-fold
        b"X-A: 1\n",  # a bare LF
        b"Expect: 100-continue\r\n",
        b"Connection: keep-alive\r\n",
        b"Connection: close\r\n",
        b"Content-Length: 0\r\n",
        b"Content-Length: 3\r\n",  # a second (or differing) Content-Length
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip\r\n",
        b"Transfer-Encoding: chunked, gzip\r\n",
        b"Connection: Upgrade\r\nUpgrade: h2c\r\n",
        b"Host: y\r\n",
    ]
)


@st.composite
def chunked_body(draw, body: bytes) -> bytes:
    """``body`` in chunks: sizes in upper or lower case, leading zeros, extensions, trailers."""
    out, at = b"", 0
    while at < len(body):
        size = draw(st.integers(1, len(body) - at))
        hexed = b"%x" % size
        hexed = draw(st.sampled_from([hexed, hexed.upper(), b"00" + hexed]))
        ext = draw(st.sampled_from([b"", b";a=b", b';name="q v"', b";x"]))
        out += hexed + ext + b"\r\n" + body[at : at + size] + b"\r\n"
        at += size
    trailer = draw(st.sampled_from([b"", b"X-T: 1\r\n"]))
    return out + b"0\r\n" + trailer + b"\r\n"


@st.composite
def request(draw) -> bytes:
    kind = draw(st.sampled_from(["lean", "cycle", "head", "get", "absolute", "asterisk"]))
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.1", b"1.0"]))
    extra = b"".join(draw(st.lists(ODD_HEADERS, max_size=2)))
    host = b"Host: x\r\n" if version == b"1.1" or draw(st.booleans()) else b""
    if kind in ("head", "get", "asterisk"):
        line = {
            "head": b"HEAD /head",
            "get": b"GET /other?q=" + draw(TOKEN),
            "asterisk": b"OPTIONS *",
        }[kind]
        return line + b" HTTP/%s\r\n%s%s\r\n" % (version, host, extra)
    path = {"lean": LEAN, "cycle": CYCLE, "absolute": b"http://x" + LEAN}[kind]
    body = draw(BODY)
    if draw(st.booleans()):
        framing = b"Transfer-Encoding: chunked\r\n"
        sent = draw(chunked_body(body))
    else:
        framing, sent = b"Content-Length: %d\r\n" % len(body), body
    return b"POST %s HTTP/%s\r\n%s%s%s\r\n%s" % (path, version, host, extra, framing, sent)


@st.composite
def stream(draw) -> list[bytes]:
    """One to three requests in one stream, cut into writes anywhere."""
    raw = b"".join(draw(st.lists(request(), min_size=1, max_size=3)))
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=4, unique=True)))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=False) if raw[a:b]]


@wire_fuzz_settings(SUITE_EXAMPLES)
@given(writes=stream())
def test_raw_request_streams_are_answered_as_h11_reads_them_or_refused_and_closed(live, writes):
    note(f"writes: {writes!r}")
    seen = reference(b"".join(writes))
    assume(seen.whole or seen.refused or seen.ends)  # not a request cut short: an answer is due
    check(live, writes)
