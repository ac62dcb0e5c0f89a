"""The access line of an inference request names the client behind a proxy, whichever HTTP path answered
it: uvicorn's proxy-headers layer (``X-Forwarded-For`` from a trusted proxy, 127.0.0.1 by default) gave
every other route's line the client, while translate and KServe v2 infer with a Content-Length, answered
by the HTTP protocol itself (the lean path), wrote the proxy's address: behind an ingress, the log of the
gateway's most used routes lost who sent them."""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from serving.app import create_app
from serving.settings import Settings
from tests.repo_fixtures import LiveServer
from tests.test_grpc import FakeBackend
from tests.test_ipv6_v_clients import _Lines
from tests.waiting import eventually

BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}
).encode()


@contextmanager
def _access_lines() -> Iterator[list[str]]:
    """The access lines logged while the block runs (entered once the server started: uvicorn's
    logging configuration replaces the access logger's handlers)."""
    handler = _Lines()
    logger = logging.getLogger("uvicorn.access")
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


def _answer(port: int, head: bytes, body: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head + body)
        return conn.recv(64)


def test_an_inference_request_from_behind_a_proxy_names_its_client_in_the_access_line_on_either_path(
    tmp_path,
):
    app = create_app(Settings(model_repository=tmp_path, grpc_port=0), backend=FakeBackend())
    lean = b"POST /v2/models/double/infer HTTP/1.1\r\nHost: k\r\nX-Forwarded-For: 203.0.113.7\r\n"
    lean += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY)
    chunked = b"POST /v2/models/double/infer HTTP/1.1\r\nHost: k\r\nX-Forwarded-For: 203.0.113.8\r\n"
    chunked += b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    with LiveServer(app, log_level="info") as live, _access_lines() as access_lines:
        assert _answer(live.port, lean, BODY).startswith(b"HTTP/1.1 200")
        assert _answer(live.port, chunked, b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)).startswith(
            b"HTTP/1.1 200"
        )
        plain = b"POST /v2/models/double/infer HTTP/1.1\r\nHost: k\r\n"  # no proxy: the peer itself
        plain += b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY)
        assert _answer(live.port, plain, BODY).startswith(b"HTTP/1.1 200")
        assert eventually(lambda: len(access_lines) >= 3, timeout_s=5)
    lean_line, chunked_line, plain_line = access_lines
    assert lean_line.startswith('203.0.113.7:0 - "POST /v2/models/double/infer HTTP/1.1" 200'), lean_line
    assert chunked_line.startswith('203.0.113.8:0 - "POST /v2/models/double/infer HTTP/1.1" 200'), (
        chunked_line
    )
    assert re.match(r'127\.0\.0\.1:\d+ - "POST /v2/models/double/infer HTTP/1\.1" 200', plain_line), (
        plain_line
    )
