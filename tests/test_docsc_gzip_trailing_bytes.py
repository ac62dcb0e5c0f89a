"""A gzip body followed by bytes that are no other gzip member is a 400 (README, "Errors": "a compressed
body whose stream is cut short or followed by other bytes") that says so, as a deflate body's does.
It was answered with zlib's words for the bytes after the stream alone, "Error -3 while decompressing
data: incorrect header check", which named no fault of the stream the client had sent whole."""

from __future__ import annotations

import gzip
import zlib

import pytest

from serving.errors import BadRequest
from serving.protocol.limits import inflate, inflate_small

BODY = b'{"inputs": []}'


@pytest.mark.parametrize("read", [inflate, inflate_small])
def test_bytes_after_a_whole_gzip_stream_are_named_as_such(read) -> None:
    with pytest.raises(BadRequest) as refused:
        read(gzip.compress(BODY) + b"junk", "gzip", 1 << 20)
    assert "bytes follow the end of its stream that are no gzip member" in refused.value.message
    with pytest.raises(BadRequest, match="bytes follow the end of its stream"):
        read(zlib.compress(BODY) + b"junk", "deflate", 1 << 20)


def test_well_formed_members_and_a_corrupt_first_one_read_as_before() -> None:
    assert inflate(gzip.compress(BODY) + gzip.compress(BODY), "gzip", 1 << 20) == BODY + BODY
    with pytest.raises(BadRequest) as refused:
        inflate(b"junk", "gzip", 1 << 20)
    assert refused.value.message == (
        "request body is not valid gzip data: Error -3 while decompressing data: incorrect header check"
    )
    with pytest.raises(BadRequest, match="the stream is cut short"):
        inflate(gzip.compress(BODY) + gzip.compress(BODY)[:5], "gzip", 1 << 20)
