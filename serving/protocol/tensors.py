"""KServe v2 tensor codecs: the JSON and binary encodings of tensors on the wire.

Shared by the HTTP routers and the gRPC server (``raw_input_contents`` / ``raw_output_contents`` use
the same byte layout as the HTTP binary tensor data extension). Every decoding failure raises
:class:`~serving.errors.BadRequest` naming the tensor and what was expected, so a client's
mistake never becomes a 500.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from serving.errors import BadRequest, PayloadTooLarge
from serving.execution.datatypes import numpy_dtype
from serving.protocol.request_values import WrittenNonFinite

# The wire layout is little-endian; on little-endian hosts numpy's native arrays already match it.
_NATIVE_IS_WIRE = sys.byteorder == "little"
MAX_DIMS = 32  # numpy 1 (Triton's python backend) allows no more
_MAX_SPAN = np.iinfo(np.intp).max // 16  # any array numpy can address, even when zero-sized
# BYTES elements decode one by one in Python (~0.75 us each, on the event loop): a tensor may hold this
# many (~12 ms), far above what any Kiln model takes (a translator: 64 texts), so that one request
# cannot hold every other for seconds (64 MiB of 4-byte empty strings: 16 M elements, ~12 s).
MAX_BYTES_ELEMENTS = 16_384


def check_shape(shape: Any, *, tensor: str) -> list[int]:
    """Validate a wire shape: at most MAX_DIMS non-negative integers numpy can lay out.

    On every request's path, so written for speed: ``type(d) is int`` also refuses bools.
    """
    if type(shape) is not list or not all(type(d) is int for d in shape):
        raise BadRequest(f"tensor {tensor!r}: shape must be a list of integers, got {_brief(shape)}")
    if shape and min(shape) < 0:
        raise BadRequest(f"tensor {tensor!r}: shape {shape} has a negative dimension")
    if len(shape) > MAX_DIMS or math.prod(shape if 0 not in shape else [d for d in shape if d]) > _MAX_SPAN:
        raise BadRequest(f"tensor {tensor!r}: shape {shape} is too large")
    return shape


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def from_json_data(data: Any, datatype: str, shape: list[int], *, tensor: str) -> np.ndarray:
    """Decode the ``data`` member of a JSON tensor (flat or nested lists, row-major)."""
    dtype = numpy_dtype(datatype, tensor=tensor)
    check_shape(shape, tensor=tensor)
    if datatype == "BYTES":
        _check_bytes_count(element_count(shape), tensor)
    flat = _flatten(data, tensor=tensor)
    if len(flat) != element_count(shape):
        raise BadRequest(
            f"tensor {tensor!r}: shape {shape} needs {element_count(shape)} elements, got {len(flat)}"
        )
    if datatype == "BYTES":
        array = np.empty(len(flat), dtype=object)
        array[:] = [_utf8(v, i, tensor) for i, v in enumerate(flat)]
        return array.reshape(shape)
    # JSON's true and false are BOOL's values, not numbers (Python's bool is an int): Triton refuses
    # them in a numeric tensor, where they ran as 1 and 0
    refused = (str, dict, list) if datatype == "BOOL" else (str, dict, list, bool)
    if any(isinstance(v, refused) or v is None for v in flat):
        raise BadRequest(f"tensor {tensor!r}: {datatype} data must be numbers")
    if datatype == "BOOL" and not all(isinstance(v, bool) or v in (0, 1) for v in flat):
        raise BadRequest(f"tensor {tensor!r}: BOOL data must be true/false")
    if dtype.kind in "iu":
        if not all(isinstance(v, int) or v.is_integer() for v in flat):
            raise BadRequest(f"tensor {tensor!r}: {datatype} data must be integers")
        info = np.iinfo(dtype)
        if flat and (min(flat) < info.min or max(flat) > info.max):
            raise BadRequest(
                f"tensor {tensor!r}: values out of range for {datatype} [{info.min}, {info.max}]"
            )
    try:
        with np.errstate(over="ignore"):  # a finite value past FP16/FP32 is refused below, not warned
            array = np.asarray(flat, dtype=dtype)
    except OverflowError:  # an integer beyond any float
        raise BadRequest(f"tensor {tensor!r}: values out of range for {datatype}") from None
    if dtype.kind == "f" and not np.isfinite(array).all():
        _check_finite_fit(flat, array, datatype, tensor)
    return array.reshape(shape)


def _check_finite_fit(flat: list, array: np.ndarray, datatype: str, tensor: str) -> None:
    """Refuse a JSON number that the type can only hold as an infinity (3.5e38 for FP32; 1e400, which
    Python's JSON reads as an infinity, for any): it was answered as ``null``, as if the client had
    sent ``Infinity``, where an integer past its range is a 400. NaN and the infinities a client writes
    (:class:`~serving.protocol.request_values.WrittenNonFinite`) stay what they are."""
    if any(not isinstance(flat[i], WrittenNonFinite) for i in np.flatnonzero(np.isinf(array))):
        largest = float(np.finfo(array.dtype).max)
        raise BadRequest(f"tensor {tensor!r}: values out of range for {datatype} [{-largest}, {largest}]")


def to_json_data(array: np.ndarray) -> list:
    """Flat row-major list for a JSON response tensor (BYTES elements as UTF-8 text). JSON has no
    infinities or NaN (RFC 8259): a non-finite float is ``null``, as the REST routes write it."""
    flat = array.reshape(-1)
    if array.dtype.kind in ("O", "S"):
        return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in flat]
    if array.dtype.kind == "f" and not np.isfinite(flat).all():
        return [v if math.isfinite(v) else None for v in flat.tolist()]
    return flat.tolist()


def from_bytes(buffer: bytes | memoryview, datatype: str, shape: list[int], *, tensor: str) -> np.ndarray:
    """Decode the binary tensor data extension layout (raw little-endian; BYTES length-prefixed)."""
    dtype = numpy_dtype(datatype, tensor=tensor)
    check_shape(shape, tensor=tensor)
    count = element_count(shape)
    if datatype == "BYTES":
        _check_bytes_count(count, tensor)
        return _deserialize_bytes(bytes(buffer), count, tensor=tensor).reshape(shape)
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise BadRequest(
            f"tensor {tensor!r}: {datatype} shape {shape} needs {expected} bytes of binary data, got {len(buffer)}"
        )
    if datatype == "BOOL" and count and np.frombuffer(buffer, np.uint8).max() > 1:
        raise BadRequest(f"tensor {tensor!r}: BOOL binary data must be bytes 0 (false) or 1 (true)")
    if _NATIVE_IS_WIRE:  # a read-only view of the request's own bytes: no copy on the hot path
        return np.frombuffer(buffer, dtype=dtype).reshape(shape)
    return np.frombuffer(buffer, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)


# The numpy type each typed-contents field carries (KServe's InferTensorContents: INT8/INT16 travel as
# int32, UINT8/UINT16 as uint32): decoded at that width, then range-checked and narrowed.
_CONTENTS_WIDTH = {"i": {1: np.int32, 2: np.int32}, "u": {1: np.uint32, 2: np.uint32}}


def from_contents(values: Sequence[Any], datatype: str, shape: list[int], *, tensor: str) -> np.ndarray:
    """Decode a gRPC tensor's typed ``contents`` (one repeated field of scalars): the element count is
    checked against the shape before anything is read (``len`` of a repeated field costs nothing, while
    a message of 64 MiB can carry 60 M one-byte zeros), and numbers decode in C (``np.fromiter``)."""
    dtype = numpy_dtype(datatype, tensor=tensor)
    check_shape(shape, tensor=tensor)
    count = element_count(shape)
    if len(values) != count:
        raise BadRequest(f"tensor {tensor!r}: shape {shape} needs {count} elements, got {len(values)}")
    if datatype == "BYTES":
        return from_json_data(list(values), datatype, shape, tensor=tensor)
    wide = np.dtype(_CONTENTS_WIDTH.get(dtype.kind, {}).get(dtype.itemsize, dtype))
    array = np.fromiter(values, dtype=wide, count=count)
    if wide != dtype:
        info = np.iinfo(dtype)
        if count and (array.min() < info.min or array.max() > info.max):
            raise BadRequest(
                f"tensor {tensor!r}: values out of range for {datatype} [{info.min}, {info.max}]"
            )
        array = array.astype(dtype)
    return array.reshape(shape)


def to_bytes(array: np.ndarray) -> bytes:
    """Encode a tensor in the binary tensor data extension layout."""
    if array.dtype.kind in ("O", "S", "U"):
        parts = []
        for item in array.reshape(-1):
            raw = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(raw)) + raw)
        return b"".join(parts)
    if _NATIVE_IS_WIRE or array.dtype.itemsize == 1:
        return array.tobytes()  # row-major bytes whatever the array's strides
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def wire_view(array: np.ndarray) -> memoryview | bytes:
    """What :func:`to_bytes` returns, as a flat byte view of the array itself where its memory holds
    exactly those bytes (a C-contiguous numeric array on a little-endian host): a large answer then
    leaves without a copy of its tensors. Any other array: :func:`to_bytes`."""
    if array.dtype.kind in ("O", "S", "U") or not array.flags.c_contiguous:
        return to_bytes(array)
    if not (_NATIVE_IS_WIRE or array.dtype.itemsize == 1):
        return to_bytes(array)
    return memoryview(array.reshape(-1).view(np.uint8))


def _utf8(value: Any, index: int, tensor: str) -> bytes:
    """A JSON BYTES element as UTF-8 bytes; a lone surrogate (invalid Unicode) is a client error."""
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise BadRequest(f"tensor {tensor!r}: BYTES data must be strings")
    try:
        return value.encode()
    except UnicodeEncodeError:
        raise BadRequest(
            f"tensor {tensor!r}: element {index} is not valid Unicode (lone surrogate)"
        ) from None


def _brief(value: Any, limit: int = 80) -> str:
    """A bounded description of a client value for an error message (never recurses without bound)."""
    nested = isinstance(value, (list, dict)) and any(
        isinstance(v, (list, dict)) for v in (value.values() if isinstance(value, dict) else value)
    )
    if nested:
        return f"a nested {type(value).__name__} of {len(value)} item(s)"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _flatten(data: Any, *, tensor: str) -> list:
    if not isinstance(data, list):
        raise BadRequest(f"tensor {tensor!r}: 'data' must be a list, got {type(data).__name__}")
    flat: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _check_bytes_count(count: int, tensor: str) -> None:
    if count > MAX_BYTES_ELEMENTS:
        raise PayloadTooLarge(
            f"tensor {tensor!r}: {count} BYTES elements; a tensor may hold at most {MAX_BYTES_ELEMENTS}"
        )


def _deserialize_bytes(buffer: bytes, count: int, *, tensor: str) -> np.ndarray:
    """``count`` length-prefixed elements, exactly: the walk stops at ``count`` (bytes left over, or
    too few for ``count`` prefixes, are refused before any element is read)."""
    if 4 * count > len(buffer):
        raise BadRequest(
            f"tensor {tensor!r}: {count} BYTES elements need at least {4 * count} bytes "
            f"(a 4-byte length each), got {len(buffer)}"
        )
    items, offset = [], 0
    for index in range(count):
        if offset + 4 > len(buffer):
            raise BadRequest(f"tensor {tensor!r}: expected {count} BYTES elements, got {index}")
        (length,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        if offset + length > len(buffer):
            raise BadRequest(f"tensor {tensor!r}: BYTES element {index} runs past the end of the data")
        items.append(buffer[offset : offset + length])
        offset += length
    if offset != len(buffer):
        raise BadRequest(
            f"tensor {tensor!r}: {len(buffer) - offset} bytes of data after its {count} BYTES elements"
        )
    array = np.empty(count, dtype=object)
    array[:] = items
    return array
