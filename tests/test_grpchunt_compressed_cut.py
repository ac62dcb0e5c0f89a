"""A compressed gRPC request whose stream is cut short (a gzip one's trailer and CRC missing, a deflate
one never finished) or followed by other bytes is refused INTERNAL, as grpc core refuses it and as
HTTP refuses such a body (limits.inflate): zlib hands back a cut stream's prefix without a word, and
Kiln's server served what that prefix parsed to."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import pytest

from serving.protocol import h2_wire as w
from tests.h2_client import (
    MESSAGE,
    MODEL_STREAM_INFER,
    Harness,
    answer,
    call_headers,
    grpc_message,
    stream_parts,
)

PLAIN = MESSAGE[5:]  # FakeBackend's ``double`` on a 2x3 tensor, as protobuf writes it


def _deflate(data: bytes, flush: int = zlib.Z_FINISH) -> bytes:
    compressor = zlib.compressobj(wbits=zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(flush)


GZIPPED = gzip.compress(PLAIN)
LARGE = gzip.compress(PLAIN + bytes(3 << 19))  # inflates past the loop's 1 MiB: inflated in a thread
CASES = {
    "gzip-without-its-trailer": ("gzip", GZIPPED[:-8], "cut short"),
    "deflate-never-finished": ("deflate", _deflate(PLAIN, zlib.Z_SYNC_FLUSH), "cut short"),
    "gzip-then-other-bytes": ("gzip", GZIPPED + b"junk", "bytes follow"),
    "deflate-then-other-bytes": ("deflate", _deflate(PLAIN) + b"junk", "bytes follow"),
    "large-gzip-without-its-trailer": ("gzip", LARGE[:-8], "cut short"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_cut_or_padded_compressed_message_is_refused_and_the_next_call_served(case: str) -> None:
    encoding, compressed, fragment = CASES[case]
    h2 = Harness(max_message_bytes=4 << 20)
    try:
        h2.frames()
        h2.send(h2.call(1, grpc_message(compressed, compressed=True), grpc_encoding=encoding))
        _, _, trailers = answer(h2.frames(), 1)
        assert trailers["grpc-status"] == "13", trailers  # INTERNAL, as grpc core answers
        assert fragment in trailers.get("grpc-message", ""), trailers
        # the whole stream is served, and the connection serves on
        h2.send(h2.call(3, grpc_message(GZIPPED, compressed=True), grpc_encoding="gzip"))
        _, message, trailers = answer(h2.frames(), 3)
        assert trailers["grpc-status"] == "0", trailers
        assert message  # the doubled tensor
    finally:
        h2.close()


def test_a_whole_stream_of_either_encoding_is_still_served() -> None:
    h2 = Harness()
    try:
        h2.frames()
        h2.send(h2.call(1, grpc_message(_deflate(PLAIN), compressed=True), grpc_encoding="deflate"))
        _, message, trailers = answer(h2.frames(), 1)
        assert trailers["grpc-status"] == "0", trailers
        assert np.frombuffer(message[-24:], np.float32).tolist() == [0, 2, 4, 6, 8, 10]
    finally:
        h2.close()


def test_a_cut_compressed_message_on_a_stream_ends_it_internal() -> None:
    h2 = Harness()
    try:
        h2.frames()
        headers = call_headers(MODEL_STREAM_INFER, grpc_encoding="gzip")
        cut = grpc_message(GZIPPED[:-8], compressed=True)
        h2.send(h2.headers(1, headers), w.frame(w.DATA, w.END_STREAM, 1, cut))
        blocks, _ = stream_parts(h2.frames(), 1)
        assert blocks[-1]["grpc-status"] == "13" and "cut short" in blocks[-1]["grpc-message"], blocks
    finally:
        h2.close()
