"""A pipelining client whose next bytes reach the gateway only after it answered the request that ends
the connection (``Connection: close``, HTTP/1.0): nothing of the client's was unread at that moment, so
the gateway closed at once, and the bytes that came after were answered with a reset that discarded
the answers still in its socket (``ConnectionResetError``: the fresh-clone suite's
``test_every_answer_up_to_a_pipelined_connection_close_arrives`` on a busy machine). It now lingers a
short while (``QUIET_LINGER_S``) where the client pipelined, LINGER_S once its bytes keep coming."""

from __future__ import annotations

import re

import pytest

from tests.test_hi2_pipelined_close import CLOSE, GET, HTTP10, answers_after_the_close


@pytest.mark.parametrize("last", [CLOSE, HTTP10], ids=["connection-close", "http-1.0"])
def test_bytes_sent_after_the_gateway_decided_to_close_do_not_reset_the_answers(last: bytes) -> None:
    answers = answers_after_the_close(GET * 100 + last, late=True)
    assert re.findall(rb"HTTP/1.[01] (\d+)", answers) == [b"200"] * 101, answers[-300:]
