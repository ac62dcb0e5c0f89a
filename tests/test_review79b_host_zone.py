"""An IPv6 literal Host with a zone (RFC 6874: ``[fe80::1%25eth0]``, what a client of a link-local
address sends where it keeps the zone in the URI's authority) is a valid Host: the Host check refused it
400 ("is not a host[:port]"), where the request was served before the check."""

from __future__ import annotations

import pytest

from serving.protocol.http1_heads import framing_refusal
from tests.test_h1hunt_body_answers import live  # noqa: F401 - the fixture
from tests.test_h1hunt_host_values import asked


@pytest.mark.parametrize("host", [b"[fe80::1%25eth0]", b"[fe80::1%25eth0]:8000", b"[fe80::1%25en0]:"])
def test_an_ipv6_literal_with_a_zone_is_a_valid_host(host):
    assert framing_refusal("1.1", [(b"host", host)]) is None


def test_a_request_to_a_link_local_address_with_its_zone_is_served(live):  # noqa: F811
    [(status, body)] = asked(live, b"[fe80::1%25eth0]:8000")
    assert status == 200 and body["body"] == "ab", body
