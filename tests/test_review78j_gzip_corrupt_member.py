"""A gzip body may be several members one after another (``cat a.gz b.gz``, what pigz and streaming
compressors write), and the gateway reads them all. A later member that is one (gzip's magic) but
corrupt, a bad CRC, was refused as "bytes follow the end of its stream that are no gzip member": a
body corrupted in transit was named a client's trailing junk. Junk after the stream is still named so."""

from __future__ import annotations

import gzip

import pytest

from serving.errors import BadRequest
from serving.protocol.limits import inflate, inflate_small

BODY = b'{"inputs": []}'


def _bad_crc() -> bytes:
    member = bytearray(gzip.compress(BODY))
    member[-8] ^= 0xFF  # the CRC32 in its trailer
    return bytes(member)


@pytest.mark.parametrize("read", [inflate, inflate_small])
def test_a_corrupt_later_member_is_named_as_a_corrupt_member(read) -> None:
    first = gzip.compress(BODY)
    with pytest.raises(BadRequest) as refused:
        read(first + _bad_crc(), "gzip", 1 << 20)
    assert "no gzip member" not in refused.value.message
    assert f"its gzip member at byte {len(first)} is corrupt" in refused.value.message
    assert "incorrect data check" in refused.value.message
    with pytest.raises(BadRequest, match="bytes follow the end of its stream that are no gzip member"):
        read(first + b"junk", "gzip", 1 << 20)
