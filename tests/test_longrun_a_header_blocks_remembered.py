"""A gRPC connection's HPACK decoder remembers the header blocks it decoded (``HeaderDecoder._seen``, up to
64 blocks of at most 1 KB each): a 1 KB block of one-byte indexed fields decodes to ~1000 fields, and
a client sending 60 such distinct blocks on each connection made every one hold ~4 MB (~2.6 MB of a
live gateway's memory per connection, 100 connections ~260 MB) for as long as it stayed open."""

from __future__ import annotations

import tracemalloc

from serving.protocol import h2_wire as w

# the static table's regular fields (15-61) but transfer-encoding (57): a request's fields, all good
REGULAR = [index for index in range(15, 62) if index != 57]


def _wide_block(k: int) -> bytes:
    """A 1 KB block: :method POST, :scheme http, :path /, then 1021 indexed regular fields."""
    return bytes([0x83, 0x86, 0x84] + [0x80 | REGULAR[(k + j) % len(REGULAR)] for j in range(1021)])


def test_distinct_small_blocks_of_many_fields_keep_little_memory_in_a_connection() -> None:
    decoder = w.HeaderDecoder(max_list_size=1 << 16, check=w.request_problem)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in range(64):
            headers = decoder.decode(_wide_block(k))
            assert len(headers) == 1024
        held = tracemalloc.get_traced_memory()[0] - before - len(headers) * 64  # the last list is ours
    finally:
        tracemalloc.stop()
    assert held < 512 * 1024  # it held ~4 MB


def test_a_calls_usual_block_is_still_answered_from_memory() -> None:
    decoder = w.HeaderDecoder(max_list_size=1 << 16, check=w.request_problem)
    block = b"".join(
        (
            bytes([0x83, 0x86]),  # :method POST, :scheme http
            w.literal_indexed_name(4, b"/inference.GRPCInferenceService/ModelInfer"),
            w.literal_indexed_name(1, b"127.0.0.1:8001"),
            w.literal_indexed_name(31, b"application/grpc"),
            w.literal(b"te", b"trailers"),
            w.literal_indexed_name(58, b"grpc-python/1.66 grpc-c/43.0.0 (linux; chttp2)"),
            w.literal(b"grpc-accept-encoding", b"identity,deflate,gzip"),
        )
    )
    first = decoder.decode_checked(block)
    assert first[1] is None
    assert decoder.decode_checked(block) is first
