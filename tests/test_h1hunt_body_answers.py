"""What the gateway's HTTP/1.1 protocol does with a request's body around its answer:

- a request answered before its body is read (a 413 from its Content-Length, a 404) is answered once:
  where the rest of its body then pauses past the read timeout, or turns malformed, the connection
  closes without a second answer (a 408 or 400 was written after the first, and a client reading one
  answer a request took it for its next request's);
- a chunked body's trailer fields are not merged into the request's headers (RFC 9110 6.5.1; the app
  had them in ``scope["headers"]``) and a trailer section is bounded as a head is (431; 200 MB of
  trailer fields were held whole);
- an HTTP/1.0 request's ``Expect: 100-continue`` is ignored (RFC 9110 10.1.1): no ``HTTP/1.1 100
  Continue`` to a client that takes no 1xx answer (15.2)."""

from __future__ import annotations

import json
import re
import socket

import pytest
from fastapi import Request

from tests.test_http1_limits import QUICK, connect, read_until_closed, responses, serve


def read_answer(sock: socket.socket) -> bytes:
    """One whole answer (its head, then its Content-Length of body), whatever the reads bring it in."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += (more := sock.recv(65536))
        assert more, data  # closed before the head's end
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)[1])
    while len(body) < length:
        body += (more := sock.recv(65536))
        assert more, data + body
    return head + b"\r\n\r\n" + body


@pytest.fixture(scope="module")
def live():
    server = serve(QUICK)
    app = server.app

    @app.post("/headers")
    async def headers(request: Request) -> dict:
        body = await request.body()  # the trailer fields arrive after the head, with the body's end
        return {"body": body.decode(), "headers": [name for name, _ in request.scope["headers"]]}

    with server as started:
        yield started


@pytest.mark.parametrize(
    "head, rest",
    [  # answered before the body is read, then the body pauses (408) or a chunk is malformed (400)
        (b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab", b""),
        (b"POST /v1/models/m/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\nab", b""),
        (b"POST /nope HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n", b"zz\r\n"),
    ],
)
def test_a_request_answered_before_its_body_is_answered_once(live, head, rest):
    with connect(live) as sock:
        sock.sendall(head)
        first = read_answer(sock)  # the early answer (404 / 413), the connection kept for the body
        assert first.startswith((b"HTTP/1.1 404 ", b"HTTP/1.1 413 ")), first
        sock.sendall(rest)  # nothing more (the body pauses past the read timeout) or a bad chunk
        data = first + read_until_closed(sock)
    assert [status for status, _ in responses(data)] == [int(first.split()[1])], data


def chunked(trailers: bytes) -> bytes:
    return (
        b"POST /headers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nab\r\n0\r\n" + trailers + b"\r\n"
    )


def test_trailer_fields_are_not_merged_into_the_headers(live):
    with connect(live) as sock:
        sock.sendall(chunked(b"X-Trailer: 1\r\nAuthorization: Bearer t\r\n"))
        data = read_answer(sock)
    [(status, body)] = responses(data)
    assert status == 200 and body["body"] == "ab", body
    assert body["headers"] == ["host", "transfer-encoding"], body


def test_a_trailer_section_over_the_head_limit_gets_431(live):
    field = b"X-T: " + b"a" * 500 + b"\r\n"
    with connect(live) as sock:
        sock.sendall(chunked(field * 8))  # 4 KB of trailer fields, twice the 2 KiB head limit
        data = read_until_closed(sock)
    [(status, body)] = responses(data)
    assert status == 431 and "trailer section" in body["error"], data
    with connect(live) as sock:  # within it: served
        sock.sendall(chunked(field * 2))
        assert responses(read_answer(sock))[0][0] == 200


def test_an_http_1_0_expect_100_continue_gets_no_1xx_answer(live):
    with connect(live) as sock:
        sock.sendall(b"POST /headers HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab")
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200 "), data  # not "HTTP/1.1 100 Continue"
    assert json.loads(data.partition(b"\r\n\r\n")[2])["body"] == "ab"
