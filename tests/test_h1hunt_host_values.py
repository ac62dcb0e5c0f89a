"""A request whose ``Host`` is not a host[:port] is refused 400 (RFC 9112 3.2: a server MUST answer
400 to "a Host header field with an invalid field value"); llhttp took any visible characters, and
the app was handed them as the request's authority. An empty Host stays valid (3.2: a target URI
without an authority)."""

from __future__ import annotations

import pytest

from tests.test_h1hunt_body_answers import live  # noqa: F401 - the fixture
from tests.test_http1_limits import connect, read_until_closed, responses


def asked(live, host: bytes) -> list[tuple[int, dict]]:  # noqa: F811 - the fixture's name
    with connect(live) as sock:
        sock.sendall(
            b"POST /headers HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nContent-Length: 2\r\n\r\nab" % host
        )
        return responses(read_until_closed(sock))


@pytest.mark.parametrize("host", [b"x y", b"a/b", b"user@x", b"x:80:80", b"[::1", b'x"'])
def test_an_invalid_host_is_refused_400(live, host):  # noqa: F811
    [(status, body)] = asked(live, host)
    assert status == 400 and "is not a host[:port]" in body["error"], body


@pytest.mark.parametrize("host", [b"x", b"", b"127.0.0.1:8000", b"[::1]:8000", b"kiln.svc.cluster.local"])
def test_a_valid_host_is_served(live, host):  # noqa: F811
    [(status, body)] = asked(live, host)
    assert status == 200 and body["body"] == "ab", body
