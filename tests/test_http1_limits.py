"""serving.protocol.http1 bounds what one connection's request may take before the app sees it: the
size of its head (414 / 431) and the time its head and body take to arrive (408), on uvicorn's ASGI
cycle and on the lean routes alike, without touching requests that arrive whole or steadily, or a
connection whose earlier request is still being answered."""

from __future__ import annotations

import asyncio
import json
import logging
import select
import socket
import time

import pytest
from fastapi import Response

from serving.protocol.http1 import http_protocol
from tests.repo_fixtures import LiveServer
from tests.test_http1_direct import make_app
from tests.waiting import eventually

HEAD_LIMIT = 2048
QUICK = 0.5  # the read timeout where the test waits for it to fire
PATIENT = 2.0  # where the test checks that it does not: far above any pause of the client
LEAN = b"/v1/models/m/echo"  # answered by the protocol itself
CYCLE = b"/cycle"  # through uvicorn's ASGI cycle


def app_with_routes():
    app = make_app()

    @app.post("/cycle")
    async def cycle(body: dict) -> dict:
        return {"cycle": body}

    @app.post("/slow")
    async def slow(seconds: float) -> dict:
        await asyncio.sleep(seconds)
        return {"slow": True}

    @app.get("/big")
    async def big() -> Response:
        return Response(b"x" * BIG, media_type="application/octet-stream")

    return app


BIG = 16 << 20  # an answer larger than the socket buffers of both ends (4 MiB each at most here)


def serve(read_timeout_s: float, send_timeout_s: float = 60.0) -> LiveServer:
    protocol = http_protocol(
        read_timeout_s=read_timeout_s, max_head_bytes=HEAD_LIMIT, send_timeout_s=send_timeout_s
    )
    if isinstance(protocol, str):
        pytest.skip("httptools is not installed: uvicorn serves with h11, which caps heads at 16 KiB itself")
    return LiveServer(app_with_routes(), http=protocol)


@pytest.fixture(scope="module")
def quick():
    with serve(QUICK) as live:
        yield live


@pytest.fixture(scope="module")
def patient():
    with serve(PATIENT) as live:
        yield live


def connect(live: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", live.port), timeout=30)


def request(path: bytes, body: bytes = b'{"a": 1}', extra: bytes = b"") -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" % path
    return head + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it ends its half of the connection. Never a reset: after a
    refusal the server reads and drops what the client still sends (a lingering close)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def responses(data: bytes) -> list[tuple[int, dict]]:
    """The (status, JSON body) of each response in ``data``."""
    found = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(
            int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length")
        )
        found.append((int(lines[0].split()[1]), json.loads(rest[:length])))
        data = rest[length:]
    return found


def answered(sock: socket.socket, count: int) -> list[tuple[int, dict]]:
    """Read ``count`` whole responses of a connection that stays open."""
    data = b""
    while True:
        try:
            found = responses(data)
            if len(found) == count:
                return found
        except (ValueError, StopIteration, json.JSONDecodeError):
            pass  # a response not whole yet
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk


def still_serves(live: LiveServer) -> None:
    with connect(live) as sock:
        sock.sendall(request(CYCLE))
        assert answered(sock, 1) == [(200, {"cycle": {"a": 1}})]


@pytest.mark.parametrize("path", [LEAN, CYCLE])
def test_headers_over_the_limit_get_431_and_the_connection_is_closed(quick, path):
    with connect(quick) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\n" % path)
        sent = 0
        while sent < 64 * HEAD_LIMIT:  # a header without end: refused long before this, and what
            sock.sendall(b"X-Pad: " + b"a" * 500 + b"\r\n")  # follows is read and dropped
            sent += 509
        [(status, body)] = responses(read_until_closed(sock))
    assert status == 431
    assert body == {"error": f"request line and headers longer than {HEAD_LIMIT} bytes"}
    still_serves(quick)


def test_one_endless_header_value_gets_431(quick):
    with connect(quick) as sock:
        sock.sendall(b"POST /cycle HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        for _ in range(64):  # more than one read of the socket (256 KiB)
            sock.sendall(b"a" * 16384)
        assert [status for status, _ in responses(read_until_closed(sock))] == [431]


ONE_READ_PADS = {  # heads of ~8 KB, four times the limit: each arrives in one read of the socket
    "one long header": b"X-Pad: " + b"a" * 8000 + b"\r\n",
    "many short headers": b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 90) for i in range(80)),
}


@pytest.mark.parametrize("pad", list(ONE_READ_PADS))
@pytest.mark.parametrize("path", [LEAN, CYCLE])
def test_a_head_over_the_limit_that_arrives_whole_at_once_gets_431(patient, path, pad):
    """A head is counted from its first byte: one that arrived whole in a read, body and all, was served
    whatever its size (a 140 KB head at a 2 KiB limit was answered 200)."""
    with connect(patient) as sock:
        sock.sendall(request(path, extra=ONE_READ_PADS[pad]))
        [(status, body)] = answered(sock, 1)
        assert read_until_closed(sock) == b""
    assert status == 431
    assert body == {"error": f"request line and headers longer than {HEAD_LIMIT} bytes"}
    still_serves(patient)


def test_a_head_over_the_limit_still_arriving_gets_431_from_its_first_read(patient):
    """Not once more of it arrives, nor at the read timeout (408), which is what it got."""
    with connect(patient) as sock:
        sock.sendall(b"POST /cycle HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 8000)  # then waits
        [(status, _)] = responses(read_until_closed(sock))
    assert status == 431


@pytest.mark.parametrize("first", [LEAN, CYCLE])
def test_a_pipelined_head_over_the_limit_gets_431_after_the_answer_before_it(patient, first):
    """Two requests in one write, the second's head over the limit: the first is answered, then the
    second refused and the connection closed (the second was served, its head never counted)."""
    pad = ONE_READ_PADS["one long header"]
    with connect(patient) as sock:
        sock.sendall(request(first, b'{"c": 3}') + request(CYCLE, extra=pad))
        [(status, body), (refused, error)] = answered(sock, 2)
        assert read_until_closed(sock) == b""
    assert status == 200 and body.get("echo", body.get("cycle")) in ('{"c": 3}', {"c": 3})
    assert refused == 431
    assert error == {"error": f"request line and headers longer than {HEAD_LIMIT} bytes"}


def test_bodies_read_with_a_head_are_not_counted_as_head(patient):
    """The limit bounds heads: a 60 KB body in the read a head arrives in, and the next request's head
    begun after it in the same read (pipelining) and ended in a later one, are served."""
    big = json.dumps({"a": "x" * (60 << 10)}).encode()
    second = request(CYCLE, extra=b"X-Pad: " + b"a" * (HEAD_LIMIT - 300) + b"\r\n")
    with connect(patient) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request(CYCLE, big) + second[: HEAD_LIMIT // 2])
        [(status, body)] = answered(sock, 1)
        assert status == 200 and body == {"cycle": {"a": "x" * (60 << 10)}}
        sock.sendall(second[HEAD_LIMIT // 2 :])
        assert answered(sock, 1) == [(200, {"cycle": {"a": 1}})]


def test_a_request_line_over_the_limit_gets_414(quick):
    with connect(quick) as sock:
        sock.sendall(b"GET /" + b"a" * (HEAD_LIMIT + 1))
        sock.sendall(b"a" * HEAD_LIMIT)
        [(status, body)] = responses(read_until_closed(sock))
    assert status == 414
    assert body == {"error": f"request line longer than {HEAD_LIMIT} bytes"}


def test_a_head_within_the_limit_is_served_however_it_is_cut(patient):
    """Headers just under the limit, sent a few bytes at a time (each read counted once), then again on
    the same connection with the next request's head in the same write as the last body."""
    pad = b"X-Pad: " + b"a" * (HEAD_LIMIT - 200) + b"\r\n"
    whole = request(LEAN, b'{"b": 2}', pad) + request(CYCLE, extra=pad)
    with connect(patient) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for at in range(0, len(whole), 97):
            sock.sendall(whole[at : at + 97])
        [(first, lean_body), (second, cycle_body)] = answered(sock, 2)
    assert (first, second) == (200, 200)
    assert lean_body["echo"] == '{"b": 2}' and cycle_body == {"cycle": {"a": 1}}


@pytest.mark.parametrize("path", [LEAN, CYCLE])
def test_a_head_that_stops_arriving_gets_408(quick, path):
    with connect(quick) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Le" % path)
        [(status, body)] = responses(read_until_closed(sock))  # before the socket's 30 s
    assert status == 408
    assert body == {"error": f"request headers not received within {QUICK:g} s"}


def test_a_head_trickled_past_the_timeout_gets_408_though_bytes_keep_coming(quick):
    """The head's allowance counts from its first byte (nginx's client_header_timeout), so a client
    cannot hold the connection by sending a byte now and then."""
    with connect(quick) as sock:
        sock.sendall(b"POST /cycle HTTP/1.1\r\n")
        deadline = time.monotonic() + 30
        # a header line each tenth of the allowance, until the server answers
        while time.monotonic() < deadline and not select.select([sock], [], [], QUICK / 10)[0]:
            sock.sendall(b"X-Slow: 1\r\n")
        status = [s for s, _ in responses(read_until_closed(sock))]
    assert status == [408]


@pytest.mark.parametrize("path", [LEAN, CYCLE])
def test_a_body_that_stops_arriving_gets_408(quick, path):
    with connect(quick) as sock:
        sock.sendall(request(path, b'{"a": 1}')[:-3])  # all but the body's last bytes
        [(status, body)] = responses(read_until_closed(sock))
    assert status == 408
    assert body == {"error": f"request body not received within {QUICK:g} s"}
    still_serves(quick)


@pytest.mark.parametrize("path", [LEAN, CYCLE])
def test_a_body_arriving_steadily_is_read_however_long_it_takes(patient, path):
    """The body's allowance is between two reads (nginx's client_body_timeout): a slow upload that keeps
    coming is read whole, here over more than the timeout."""
    body = b'{"a": "' + b"x" * 5 + b'"}'
    whole = request(path, body)
    cut = len(whole) - len(body)
    with connect(patient) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(whole[:cut])
        for at in range(cut, len(whole), 2):  # 6 writes 1.5x the allowance apart from the first
            time.sleep(PATIENT / 4)  # the client's pace: a quarter of the allowance between writes
            sock.sendall(whole[at : at + 2])
        [(status, answer)] = answered(sock, 1)
    assert status == 200
    assert answer.get("echo", answer.get("cycle")) in (body.decode(), {"a": "x" * 5})


def test_a_pipelined_head_waits_while_the_request_before_it_is_answered(patient):
    """A head that arrives part by part while the connection's earlier request is still answered (here
    for longer than the timeout) is not timed out: the client waits on the gateway, and gets the
    allowance from that answer on."""
    first = b"POST /slow?seconds=%g HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" % (1.25 * PATIENT)
    second = request(CYCLE)
    with connect(patient) as sock:
        sock.sendall(first + second[:20])
        [(status, body)] = answered(sock, 1)
        assert (status, body) == (200, {"slow": True})
        sock.sendall(second[20:])
        assert answered(sock, 1) == [(200, {"cycle": {"a": 1}})]


def test_a_client_that_reads_none_of_its_answer_is_cut_at_the_send_timeout():
    """Its connection's writes pause once the socket buffers fill, and the gateway stops reading it
    (back-pressure): without a bound the connection, and whatever it held, stayed for ever."""
    with serve(PATIENT, send_timeout_s=QUICK) as live:
        connections = live.server.server_state.connections
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
        sock.settimeout(30)
        sock.connect(("127.0.0.1", live.port))
        with sock:
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")  # then never read
            assert eventually(lambda: len(connections) == 1)
            assert eventually(lambda: not connections, timeout_s=30), "the gateway kept the connection"
            received = 0
            try:
                while chunk := sock.recv(1 << 20):
                    received += len(chunk)
            except ConnectionResetError:
                pass
            assert received < BIG  # cut, not finished
        still_serves(live)


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"GARBAGE / HTTP/1.1\r\nHost: x\r\n\r\n", "Invalid method encountered"),
        (b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n", "Invalid header token"),
    ],
)
def test_a_request_the_parser_refuses_gets_a_json_400_naming_why_logged_once(patient, head, reason):
    """uvicorn answered these in plain text ("Invalid HTTP request received.", no reason) and logged
    that line without the client; a head the limits refused was logged twice (theirs and uvicorn's)."""
    warnings = _Warnings()
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(warnings)
    try:
        with connect(patient) as sock:
            sock.sendall(head)
            [(status, body)] = responses(read_until_closed(sock))
        with connect(patient) as sock:
            sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\n" % CYCLE + b"X-Pad: " + b"a" * 2 * HEAD_LIMIT)
            [(too_large, _)] = responses(read_until_closed(sock))
    finally:
        logger.removeHandler(warnings)
    assert (status, body) == (400, {"error": f"invalid HTTP request: {reason}"})
    assert too_large == 431
    assert len(warnings.messages) == 2, warnings.messages  # one line a refusal, each with its client
    assert (
        warnings.messages[0].startswith("refused a request from 127.0.0.1:")
        and reason in warnings.messages[0]
    )
    assert "longer than" in warnings.messages[1]
    still_serves(patient)
