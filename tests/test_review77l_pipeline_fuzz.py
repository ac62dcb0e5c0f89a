"""The differential fuzz of tests/test_http1_differential.py on long pipelines: 60 to 220 requests (past
the 64 a connection parses and queues, the rest of a read kept unparsed until they are answered), mostly
valid (GETs, bodies full of ``\\r\\n\\r\\n``, chunked bodies of them with trailers, lean POSTs), now and
then a ``Connection: close``, an HTTP/1.0 request or one of that module's odd requests, the stream cut
into writes anywhere. Every answer h11 reads a request for arrives, in order and whole, up to the close
or refusal, and nothing after it (``check``). ``KILN_WIRE_FUZZ_EXAMPLES`` explores more at random."""

from __future__ import annotations

from hypothesis import assume, given, note
from hypothesis import strategies as st

from tests.repo_fixtures import wire_fuzz_settings
from tests.test_http1_differential import CYCLE, LEAN, check, live, post, reference, request  # noqa: F401

SUITE_EXAMPLES = 40
GET = b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n"
CHUNKED_CRLFS = (
    b"POST /plain HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"8\r\n\r\n\r\n\r\n\r\n\r\n0\r\nX-T: 1\r\n\r\n"
)
VALID = st.sampled_from(
    [GET, GET, GET, post(CYCLE, b"\r\n\r\n" * 30), CHUNKED_CRLFS, post(LEAN, b"abc\r\n\r\nde")]
)
ENDING = st.sampled_from(
    [b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"GET /head HTTP/1.0\r\n\r\n"]
)
REQUEST = st.one_of(*[VALID] * 100, ENDING, request())


@st.composite
def long_pipeline(draw) -> list[bytes]:
    count = draw(st.integers(60, 220))
    raw = b"".join(draw(st.lists(REQUEST, min_size=count, max_size=count)))
    cuts = sorted(draw(st.lists(st.integers(1, len(raw) - 1), max_size=8, unique=True)))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=False)]


@wire_fuzz_settings(SUITE_EXAMPLES)
@given(writes=long_pipeline())
def test_long_pipelines_cut_anywhere_are_answered_in_order_up_to_their_end(live, writes):  # noqa: F811
    note(f"{len(writes)} writes of {[len(w) for w in writes]} bytes")
    seen = reference(b"".join(writes))
    assume(seen.whole or seen.refused or seen.ends)  # not a request cut short: an answer is due
    check(live, writes)
