"""KServe v2 tensors: datatype <-> numpy mapping, JSON and binary encodings, classification strings.

Shared by the HTTP routers and the gRPC server (``raw_input_contents`` / ``raw_output_contents`` use
the same byte layout as the HTTP binary tensor data extension). Every decoding failure raises
:class:`~serving.backends.base.BadRequest` naming the tensor and what was expected, so a client's
mistake never becomes a 500.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from serving.backends.base import BadRequest

# KServe v2 datatype -> numpy dtype. BYTES tensors are numpy object arrays of ``bytes``.
DATATYPE_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_NUMPY_TO_DATATYPE = {dtype: name for name, dtype in DATATYPE_TO_NUMPY.items()}

# The wire layout is little-endian; on little-endian hosts numpy's native arrays already match it.
_NATIVE_IS_WIRE = sys.byteorder == "little"

# Triton config.pbtxt ``TYPE_*`` names -> KServe v2 datatype names.
CONFIG_TYPE_TO_DATATYPE = {f"TYPE_{name}": name for name in DATATYPE_TO_NUMPY if name != "BYTES"}
CONFIG_TYPE_TO_DATATYPE["TYPE_STRING"] = "BYTES"


def numpy_dtype(datatype: str, *, tensor: str = "") -> np.dtype:
    """The numpy dtype of a KServe datatype; unknown names are a client error."""
    try:
        return DATATYPE_TO_NUMPY[datatype]
    except KeyError:
        where = f"tensor {tensor!r}: " if tensor else ""
        raise BadRequest(
            f"{where}unsupported datatype {datatype!r}; expected one of {sorted(DATATYPE_TO_NUMPY)}"
        ) from None


def datatype_of(array: np.ndarray) -> str:
    """The KServe datatype name of a numpy array (object and string arrays are BYTES)."""
    if array.dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return _NUMPY_TO_DATATYPE[array.dtype]
    except KeyError:
        raise TypeError(f"numpy dtype {array.dtype} has no KServe v2 datatype") from None


def check_shape(shape: Any, *, tensor: str) -> list[int]:
    """Validate a wire shape: a list of non-negative integers."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise BadRequest(f"tensor {tensor!r}: shape must be a list of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise BadRequest(f"tensor {tensor!r}: shape {shape} has a negative dimension")
    return shape


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def from_json_data(data: Any, datatype: str, shape: list[int], *, tensor: str) -> np.ndarray:
    """Decode the ``data`` member of a JSON tensor (flat or nested lists, row-major)."""
    dtype = numpy_dtype(datatype, tensor=tensor)
    check_shape(shape, tensor=tensor)
    flat = _flatten(data, tensor=tensor)
    if len(flat) != element_count(shape):
        raise BadRequest(
            f"tensor {tensor!r}: shape {shape} needs {element_count(shape)} elements, got {len(flat)}"
        )
    if datatype == "BYTES":
        items = [v.encode() if isinstance(v, str) else v for v in flat]
        if not all(isinstance(v, bytes) for v in items):
            raise BadRequest(f"tensor {tensor!r}: BYTES data must be strings")
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array.reshape(shape)
    if any(isinstance(v, (str, dict, list)) or v is None for v in flat):
        raise BadRequest(f"tensor {tensor!r}: {datatype} data must be numbers")
    if datatype == "BOOL" and not all(isinstance(v, bool) or v in (0, 1) for v in flat):
        raise BadRequest(f"tensor {tensor!r}: BOOL data must be true/false")
    if dtype.kind in "iu":
        if not all(float(v).is_integer() for v in flat):
            raise BadRequest(f"tensor {tensor!r}: {datatype} data must be integers")
        info = np.iinfo(dtype)
        if flat and (min(flat) < info.min or max(flat) > info.max):
            raise BadRequest(
                f"tensor {tensor!r}: values out of range for {datatype} [{info.min}, {info.max}]"
            )
    return np.asarray(flat, dtype=dtype).reshape(shape)


def to_json_data(array: np.ndarray) -> list:
    """Flat row-major list for a JSON response tensor (BYTES elements as UTF-8 text)."""
    flat = array.reshape(-1)
    if array.dtype.kind in ("O", "S"):
        return [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in flat]
    return flat.tolist()


def from_bytes(buffer: bytes | memoryview, datatype: str, shape: list[int], *, tensor: str) -> np.ndarray:
    """Decode the binary tensor data extension layout (raw little-endian; BYTES length-prefixed)."""
    dtype = numpy_dtype(datatype, tensor=tensor)
    check_shape(shape, tensor=tensor)
    count = element_count(shape)
    if datatype == "BYTES":
        return _deserialize_bytes(bytes(buffer), count, tensor=tensor).reshape(shape)
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise BadRequest(
            f"tensor {tensor!r}: {datatype} shape {shape} needs {expected} bytes of binary data, got {len(buffer)}"
        )
    if _NATIVE_IS_WIRE:  # a read-only view of the request's own bytes: no copy on the hot path
        return np.frombuffer(buffer, dtype=dtype).reshape(shape)
    return np.frombuffer(buffer, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)


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


def classification(
    scores: np.ndarray, count: int, labels: Sequence[str] | None, *, batched: bool
) -> np.ndarray:
    """Triton's classification extension: the top ``count`` classes as BYTES ``"score:index[:label]"``."""
    if count <= 0:
        raise BadRequest(f"classification count must be a positive integer, got {count}")
    rows = scores.reshape(scores.shape[0], -1) if batched else scores.reshape(1, -1)
    count = min(count, rows.shape[1])
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :count]
    out = np.empty(order.shape, dtype=object)
    for r, row in enumerate(order):
        for c, index in enumerate(row):
            text = f"{float(rows[r, index]):f}:{int(index)}"
            if labels is not None and index < len(labels):
                text += f":{labels[index]}"
            out[r, c] = text.encode()
    return out if batched else out.reshape(count)


def parse_classification(entry: bytes | str) -> tuple[float, int, str | None]:
    """Split one ``"score:index[:label]"`` classification string."""
    text = entry.decode() if isinstance(entry, bytes) else entry
    score, index, *label = text.split(":", 2)
    return float(score), int(index), (label[0] if label else None)


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


def _deserialize_bytes(buffer: bytes, count: int, *, tensor: str) -> np.ndarray:
    items, offset = [], 0
    while offset < len(buffer):
        if offset + 4 > len(buffer):
            raise BadRequest(f"tensor {tensor!r}: truncated BYTES length prefix at offset {offset}")
        (length,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        if offset + length > len(buffer):
            raise BadRequest(f"tensor {tensor!r}: BYTES element {len(items)} runs past the end of the data")
        items.append(buffer[offset : offset + length])
        offset += length
    if len(items) != count:
        raise BadRequest(f"tensor {tensor!r}: expected {count} BYTES elements, got {len(items)}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array
