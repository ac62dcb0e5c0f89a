"""A gRPC client sending a bearer token (a JWT is often 1-2 KB) sends it unindexed in every call's header
block, whose grpc-timeout differs call to call: the HTTP/2 server's table of fields judged well-formed
(``h2_wire._GOOD_FIELDS``) kept fields of up to 1 KiB only, so such a token was judged by the regular
expressions at every call (~4-9 us a call more on a 2 KB token). It keeps fields of up to 8 KiB, and
bounds the bytes it holds in all instead."""

from __future__ import annotations

import pytest

from serving.protocol import h2_wire as w

TOKEN = b"Bearer " + (b"eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9." * 60)[:1800]


def _call_block(timeout: bytes) -> bytes:
    """One call's header block as grpc core writes it: its token and timeout literal, never indexed."""
    return b"".join(
        (
            bytes([0x83, 0x86]),  # :method POST, :scheme http
            w.literal_indexed_name(4, b"/inference.GRPCInferenceService/ModelInfer"),
            w.literal_indexed_name(1, b"127.0.0.1:8001"),
            w.literal_indexed_name(31, b"application/grpc"),
            w.literal(b"te", b"trailers"),
            w.literal(b"grpc-timeout", timeout),
            w.literal_indexed_name(23, TOKEN),  # authorization
        )
    )


def test_a_bearer_token_of_two_kilobytes_is_judged_once_across_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    w._GOOD_FIELDS.clear()
    monkeypatch.setattr(w, "_good_bytes", 0, raising=False)
    judged: list[bytes] = []
    real = w._judged

    def counting(name: bytes, value: bytes) -> str | None:
        judged.append(name)
        return real(name, value)

    monkeypatch.setattr(w, "_judged", counting)
    decoder = w.HeaderDecoder(max_list_size=1 << 16, check=w.request_problem)
    for call in range(5):
        headers, problem = decoder.decode_checked(_call_block(b"%du" % (999_000 + call)))
        assert problem is None and (b"authorization", TOKEN) in headers
    assert judged.count(b"authorization") == 1
    assert judged.count(b"grpc-timeout") == 5


def test_distinct_values_at_the_longest_remembered_keep_the_table_within_its_bytes() -> None:
    w._GOOD_FIELDS.clear()
    for i in range(w.GOOD_FIELDS_MAX):
        value = f"{i:08d}-".encode() + b"a" * (w.GOOD_FIELD_BYTES - 20)
        assert w.field_problem(b"x-blob", value) is None
        held = sum(len(name) + len(value) for name, value in w._GOOD_FIELDS)
        assert held <= w.GOOD_FIELDS_BYTES
    assert w.field_problem(b"x-blob", b"a" * (w.GOOD_FIELD_BYTES + 1)) is None
    assert (b"x-blob", b"a" * (w.GOOD_FIELD_BYTES + 1)) not in w._GOOD_FIELDS
