"""The HTTP/2 server's table of header fields judged well-formed (``h2_wire._GOOD_FIELDS``) is shared by
every connection for the life of the process: a client sending distinct long header values (up to the
64 KiB header list each call) kept up to 4096 of them, ~256 MiB of a worker's memory held for good."""

from __future__ import annotations

from serving.protocol import h2_wire as w


def test_distinct_long_header_values_keep_little_memory_in_the_judged_fields_table() -> None:
    w._GOOD_FIELDS.clear()
    for i in range(w.GOOD_FIELDS_MAX):  # the most it holds before it is cleared
        value = f"{i:08d}-".encode() + b"a" * 8000
        assert w.field_problem(b"x-blob", value) is None
    held = sum(len(name) + len(value) for name, value in w._GOOD_FIELDS)
    assert held <= 5 << 20  # it held ~32 MiB of these 8 KB values (~256 MiB of 64 KiB ones)


def test_a_short_field_is_still_remembered_and_a_long_bad_one_still_refused() -> None:
    w._GOOD_FIELDS.clear()
    assert w.field_problem(b"grpc-timeout", b"5S") is None
    assert (b"grpc-timeout", b"5S") in w._GOOD_FIELDS
    long_bad = b"a" * 9000 + b"\r\nb"
    assert w.field_problem(b"x-blob", long_bad) is not None
    assert w.field_problem(b"x-blob", long_bad) is not None  # judged again, never remembered as good
    assert w.field_problem(b"x-blob", b"a" * 9000) is None
