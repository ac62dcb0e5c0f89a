"""KServe v2 datatypes: names <-> numpy dtypes, Triton config type names, classification strings.

Below every wire format: the repository reader, the backends and the protocol codecs share these.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serving.errors import BadRequest

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

# Triton config.pbtxt ``TYPE_*`` names -> KServe v2 datatype names.
CONFIG_TYPE_TO_DATATYPE = {f"TYPE_{name}": name for name in DATATYPE_TO_NUMPY if name != "BYTES"}
CONFIG_TYPE_TO_DATATYPE["TYPE_STRING"] = "BYTES"
CONFIG_TYPE_TO_DATATYPE["TYPE_BF16"] = "BF16"  # as Triton lists it; no numpy dtype, so never on the wire


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


def classification(
    scores: np.ndarray, count: int, labels: Sequence[str] | None, *, batched: bool
) -> np.ndarray:
    """Triton's classification extension: the top ``count`` classes as BYTES ``"score:index[:label]"``,
    the label left out where the class has none (past the labels, or a blank line), as Triton leaves it.
    Each batch row (the whole tensor, unbatched) is one set of classes, whatever its dims; the score
    is written as C++'s ``std::to_string`` writes the output's type (``7`` for an integer, ``7.000000``
    for FP32/FP64), and an output of another type (FP16, BOOL, BYTES) is refused with Triton's 400."""
    if count <= 0:
        raise BadRequest(f"classification count must be a positive integer, got {count}")
    if scores.dtype.kind not in "iuf" or scores.dtype == np.float16:
        raise BadRequest(
            "class result not available for output due to unsupported type "
            f"'{_NUMPY_TO_DATATYPE.get(scores.dtype, 'BYTES')}'"
        )
    rows = scores.reshape(scores.shape[0], -1) if batched else scores.reshape(1, -1)
    count = min(count, rows.shape[1])
    order = _descending(rows)[:, :count]
    write = int if rows.dtype.kind in "iu" else lambda v: f"{float(v):f}"
    out = np.empty(order.shape, dtype=object)
    for r, row in enumerate(order):
        for c, index in enumerate(row):
            text = f"{write(rows[r, index])}:{int(index)}"
            if labels is not None and index < len(labels) and labels[index]:
                text += f":{labels[index]}"
            out[r, c] = text.encode()
    return out if batched else out.reshape(count)


def _descending(rows: np.ndarray) -> np.ndarray:
    """Each row's column order, largest first, ties by the lower index (Triton's sort keeps them so on
    rows its insertion sort orders); integers compared as integers (as float64, INT64 scores above
    2**53 tied), NaN last."""
    if rows.dtype.kind == "f":
        return np.argsort(-rows, axis=1, kind="stable")
    last = rows.shape[1] - 1  # a stable ascending sort of the reversed row, read backwards
    return last - np.argsort(rows[:, ::-1], axis=1, kind="stable")[:, ::-1]


def parse_classification(entry: bytes | str) -> tuple[float, int, str | None]:
    """Split one ``"score:index[:label]"`` classification string."""
    text = entry.decode() if isinstance(entry, bytes) else entry
    score, index, *label = text.split(":", 2)
    return float(score), int(index), (label[0] if label else None)
