"""HTTP/2 wire pieces for the gateway's own gRPC server: frames, HPACK, gRPC's header values.

RFC 9113 (HTTP/2) frames and RFC 7541 (HPACK) header blocks, only as much as a gRPC server needs:
the decoder reads any header block a client may send (indexed fields, literals with and without
indexing, Huffman strings through the ``hpack`` package's table, dynamic table size updates); the
encoder writes the server's few headers as literals that never touch the client's dynamic table, so
it keeps no state. A decoded block is remembered while the dynamic table stays unchanged: a client
repeating one request sends the same few bytes of indexed fields every time (8 bytes a call from
perf_analyzer and tritonclient), and the same bytes then give the same headers without decoding.
"""

from __future__ import annotations

import re
import struct
from collections import deque
from collections.abc import Callable

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 section 6)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
# Flags
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# Error codes (section 7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 5, 6, 7, 8, 9
ENHANCE_YOUR_CALM = 11
# Settings (section 6.5.2)
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 1, 2, 3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 4, 5, 6
DEFAULT_WINDOW = 65_535
DEFAULT_FRAME_SIZE = 16_384
MAX_WINDOW = 2**31 - 1

HEAD = struct.Struct(">BHBBL")  # length (high byte, low 16 bits), type, flags, stream id


class H2Error(Exception):
    """A connection error: the connection ends with GOAWAY carrying ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One frame: the 9-byte header, then ``payload``."""
    size = len(payload)
    return HEAD.pack(size >> 16, size & 0xFFFF, kind, flags, stream) + payload


def frame_head(kind: int, flags: int, stream: int, size: int) -> bytes:
    """The 9-byte header of a frame of ``size`` payload bytes written after it in pieces of their own."""
    return HEAD.pack(size >> 16, size & 0xFFFF, kind, flags, stream)


def settings_frame(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HL", key, value) for key, value in values.items()))


def window_update(stream: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream, increment.to_bytes(4, "big"))


def rst_stream(stream: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream, code.to_bytes(4, "big"))


def goaway(last_stream: int, code: int, message: str = "") -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">LL", last_stream, code) + message.encode()[:256])


# --- HPACK: integers and strings -------------------------------------------------------------------


def encode_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer with ``prefix_bits`` in the first byte, whose other bits are ``first``."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _decode_int(block: bytes, at: int, prefix_bits: int) -> tuple[int, int]:
    """(value, position after it) of the integer starting at ``block[at]``."""
    limit = (1 << prefix_bits) - 1
    value = block[at] & limit
    at += 1
    if value < limit:
        return value, at
    shift = 0
    while True:
        if at >= len(block) or shift > 28:
            raise H2Error(COMPRESSION_ERROR, "malformed HPACK integer")
        byte = block[at]
        at += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _decode_string(block: bytes, at: int) -> tuple[bytes, int]:
    if at >= len(block):  # a literal whose name or value the block ends before
        raise H2Error(COMPRESSION_ERROR, "HPACK string missing at the end of its header block")
    huffman = block[at] & 0x80
    size, at = _decode_int(block, at, 7)
    end = at + size
    if end > len(block):
        raise H2Error(COMPRESSION_ERROR, "HPACK string runs past its header block")
    raw = block[at:end]
    if huffman:
        try:
            raw = decode_huffman(raw)
        except Exception as error:  # hpack's HPACKDecodingError: bad padding or EOS inside
            raise H2Error(COMPRESSION_ERROR, f"bad Huffman string: {error}") from None
    return raw, end


def literal(name: bytes, value: bytes) -> bytes:
    """A header as a literal never added to the peer's dynamic table (RFC 7541 section 6.2.2)."""
    return b"\x00" + encode_int(len(name), 7) + name + encode_int(len(value), 7) + value


def literal_indexed_name(index: int, value: bytes) -> bytes:
    """A literal without indexing whose name is the static table's entry ``index``."""
    return encode_int(index, 4) + encode_int(len(value), 7) + value


_STATIC = (None, *HeaderTable.STATIC_TABLE)  # 1-based, as HPACK numbers it


Headers = list[tuple[bytes, bytes]]


SEEN_FIELDS = 32  # the most fields of a block a connection's decoder remembers (a call sends ~10)


class HeaderDecoder:
    """HPACK decoding with the connection's dynamic table (RFC 7541), bounded in what it accepts."""

    def __init__(
        self,
        max_table_size: int = 4096,
        max_list_size: int = 65_536,
        check: Callable[[Headers], str | None] | None = None,
    ) -> None:
        self.max_table_size = max_table_size  # what we advertise in SETTINGS_HEADER_TABLE_SIZE
        self.table_size = max_table_size  # the encoder's current choice, at most the above
        self.max_list_size = max_list_size
        # the verdict on a block whose list passes ``max_list_size``: decoded to its end all the same (the
        # table must follow every block), so its one call ends and the connection's others are served
        self.oversized = f"header list above {max_list_size} bytes"
        self.check = check  # what is wrong with a block's headers, judged once per remembered block
        self.entries: deque[tuple[bytes, bytes]] = deque()
        self.used = 0
        self._seen: dict[bytes, tuple[Headers, str | None]] = {}

    def decode(self, block: bytes) -> Headers:
        """The (name, value) pairs of one complete header block (a list too large: COMPRESSION_ERROR)."""
        headers, problem = self.decode_checked(block)
        if problem is self.oversized:
            raise H2Error(COMPRESSION_ERROR, problem)
        return headers

    def decode_checked(self, block: bytes) -> tuple[Headers, str | None]:
        """The (name, value) pairs of one complete header block, and ``check``'s verdict on them
        (remembered with the block, so a client repeating its request's headers is judged once), or
        :attr:`oversized` where they pass ``max_list_size`` (the pairs past it dropped, the block still
        decoded: RFC 9113 section 10.5.1). A block of more fields than a list within the limit can hold
        (each counts 32 bytes and more) is a COMPRESSION_ERROR: decoding it all cost a step a byte."""
        known = self._seen.get(block)
        if known is not None:
            return known
        headers: list[tuple[bytes, bytes]] = []
        changed, listed, at, end = False, 0, 0, len(block)
        fields, most = 0, self.max_list_size // 32
        while at < end:
            byte = block[at]
            if byte & 0x80:  # indexed field
                index, at = _decode_int(block, at, 7)
                name, value = self._entry(index)
            elif byte & 0x40 or not byte & 0x20:  # a literal (incremental indexing, without, never)
                indexing = byte & 0x40
                index, at = _decode_int(block, at, 6 if indexing else 4)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, at = _decode_string(block, at)
                value, at = _decode_string(block, at)
                if indexing:
                    self._add(name, value)
                    changed = True
            else:  # dynamic table size update: only before the block's first field (RFC 7541 section 4.2)
                if fields:
                    raise H2Error(COMPRESSION_ERROR, "a dynamic table size update after a header field")
                size, at = _decode_int(block, at, 5)
                if size > self.max_table_size:
                    raise H2Error(
                        COMPRESSION_ERROR, f"table size {size} above the {self.max_table_size} allowed"
                    )
                self.table_size = size
                self._evict()
                changed = True
                continue
            fields += 1
            if fields > most:
                raise H2Error(COMPRESSION_ERROR, f"{fields} fields in one header block, above {most}")
            listed += len(name) + len(value) + 32
            if listed <= self.max_list_size:
                headers.append((name, value))
        if changed:
            self._seen.clear()  # indices now name other entries
        if listed > self.max_list_size:
            return headers, self.oversized  # never remembered: its call ends whatever its headers say
        decoded = headers, None if self.check is None else self.check(headers)
        # a call's usual blocks only: short, and of few fields (a 1 KB block of one-byte indexed fields
        # is ~1000 of them, and 64 such held ~4 MB for the connection's life)
        if not changed and len(self._seen) < 64 and len(block) <= 1024 and fields <= SEEN_FIELDS:
            self._seen[block] = decoded
        return decoded

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index < len(_STATIC):
            return _STATIC[index]
        dynamic = index - len(_STATIC)
        if 0 <= dynamic < len(self.entries):
            return self.entries[dynamic]
        raise H2Error(COMPRESSION_ERROR, f"HPACK index {index} is not in the table")

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 32
        if size > self.table_size:
            self.entries.clear()
            self.used = 0
            return
        self.entries.appendleft((name, value))
        self.used += size
        self._evict()

    def _evict(self) -> None:
        while self.used > self.table_size:
            name, value = self.entries.pop()
            self.used -= len(name) + len(value) + 32


# --- HTTP/2's rules for a request's fields (RFC 9113 section 8) ------------------------------------

_REQUEST_PSEUDO = {b":method": 1, b":scheme": 2, b":path": 4, b":authority": 8}
_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")  # a token in lower case (RFC 9113 section 8.2.1)
_FIELD_VALUE_BREAK = re.compile(rb"[\x00\r\n]")  # what would end a field in HTTP/1 (whitespace tolerated)


# Fields judged well-formed: a client repeats its fields call after call (from its HPACK table), so
# each is judged once, a set lookup instead of two regular expressions (~4 -> ~1 us a request). Bounded:
# cleared when full (a grpc-timeout's value differs at every call), and holding short fields only: it
# is every connection's for the life of the process, and distinct values of up to the 64 KiB header
# list each call kept ~256 MiB of a worker's memory (a client's usual fields are far shorter).
_GOOD_FIELDS: set[tuple[bytes, bytes]] = set()
GOOD_FIELDS_MAX = 4096
# The longest name + value remembered: a bearer token fits (a JWT is often 1-2 KB, sent unindexed in
# every call's block; kept to 1 KiB, its regular expressions cost ~2 us a KB every call). The bytes
# held in all are bounded instead: cleared past GOOD_FIELDS_BYTES, as past GOOD_FIELDS_MAX fields.
GOOD_FIELD_BYTES = 8192
GOOD_FIELDS_BYTES = 4 << 20
_good_bytes = 0  # the names' and values' bytes in _GOOD_FIELDS


def field_problem(name: bytes, value: bytes) -> str | None:
    """What makes a regular field malformed in HTTP/2: a name not a lowercase token, a
    connection-specific field, ``te`` other than ``trailers``, or a value with NUL, CR or LF."""
    global _good_bytes
    if (name, value) in _GOOD_FIELDS:
        return None
    problem = _judged(name, value)
    size = len(name) + len(value)
    if problem is None and size <= GOOD_FIELD_BYTES:
        if len(_GOOD_FIELDS) >= GOOD_FIELDS_MAX or _good_bytes + size > GOOD_FIELDS_BYTES:
            _GOOD_FIELDS.clear()
            _good_bytes = 0
        _GOOD_FIELDS.add((name, value))
        _good_bytes += size
    return problem


def _judged(name: bytes, value: bytes) -> str | None:
    if _FIELD_NAME.fullmatch(name) is None:
        return f"header name {name!r} is not a lowercase token"
    if name in _CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
        return f"connection-specific header {name.decode()!r}"
    if _FIELD_VALUE_BREAK.search(value) is not None:
        return f"header {name.decode()!r} has NUL, CR or LF in its value"
    return None


def request_problem(headers: Headers) -> str | None:
    """Why a request's header list is malformed (RFC 9113 section 8.3.1: its pseudo-headers, those of
    a request only, each once, before the regular fields; :method, :scheme and a non-empty :path, or
    only :authority with CONNECT), or None. Such a request is a stream error, whatever it asks."""
    seen, regular, method = 0, False, None
    for name, value in headers:
        if name[:1] == b":":
            bit = _REQUEST_PSEUDO.get(name)
            if bit is None:
                return f"pseudo-header {name.decode(errors='replace')!r} is not a request's"
            if regular:
                return f"pseudo-header {name.decode()} after a regular header"
            if seen & bit:
                return f"{name.decode()} twice"
            seen |= bit
            if bit == 1:
                method = value
            elif bit == 4 and not value:
                return "empty :path"
        else:
            regular = True
            if (problem := field_problem(name, value)) is not None:
                return problem
    if method == b"CONNECT":
        return None if seen == 9 else "CONNECT with :scheme or :path, or without :authority"
    return None if seen & 7 == 7 else "a request without :method, :scheme or :path"


def trailers_problem(headers: Headers) -> str | None:
    """Why a request's trailers are malformed: a pseudo-header, or a field as :func:`field_problem`."""
    for name, value in headers:
        if name[:1] == b":":
            return f"pseudo-header {name.decode(errors='replace')!r} in trailers"
        if (problem := field_problem(name, value)) is not None:
            return problem
    return None


# --- gRPC's header values --------------------------------------------------------------------------

_TIMEOUT_UNITS = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}


def parse_timeout(value: bytes) -> float | None:
    """Seconds of a ``grpc-timeout`` value (``<1-8 digits><unit>``); None when malformed."""
    unit = _TIMEOUT_UNITS.get(value[-1]) if value else None
    digits = value[:-1]
    if unit is None or not 0 < len(digits) <= 8 or not digits.isdigit():
        return None
    return int(digits) * unit


MESSAGE_BYTES = 4096  # a grpc-message's most bytes once encoded: grpc clients refuse 8-16 KiB of headers


def bounded_message(message: str, limit: int = MESSAGE_BYTES) -> str:
    """``message`` cut (``...`` marking the cut) where its grpc-message encoding would pass ``limit``
    bytes: a client past its header list limit drops the status and reports RESOURCE_EXHAUSTED
    "received metadata size exceeds hard limit" instead (a message naming a model in 5 000 accented
    letters encodes to 30 KB)."""
    if len(message) * 12 <= limit:  # 4 UTF-8 bytes a character, 3 encoded bytes each
        return message
    size, cut = 0, 0
    for at, char in enumerate(message):
        size += 1 if " " <= char <= "~" and char != "%" else 3 * len(char.encode(errors="replace"))
        if size <= limit - 3:
            cut = at + 1  # the longest start that leaves room for the "..."
        elif size > limit:
            return message[:cut] + "..."
    return message


def percent_encode(message: str) -> bytes:
    """``grpc-message``'s encoding: printable ASCII but '%' as is, every other byte as %XX."""
    out = bytearray()
    for byte in message.encode():
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)
