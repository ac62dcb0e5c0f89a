"""KServe v2 tensor encodings agree with tritonclient's own, and bad tensors name what is wrong."""

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from serving.errors import BadRequest, PayloadTooLarge
from serving.execution.datatypes import DATATYPE_TO_NUMPY, classification, datatype_of, parse_classification
from serving.protocol.tensors import (
    MAX_BYTES_ELEMENTS,
    from_bytes,
    from_contents,
    from_json_data,
    to_bytes,
    to_json_data,
)

NUMERIC = sorted(set(DATATYPE_TO_NUMPY) - {"BYTES"})


@pytest.mark.parametrize("datatype", NUMERIC)
def test_numeric_tensors_round_trip_through_binary_and_json(datatype):
    dtype = DATATYPE_TO_NUMPY[datatype]
    array = (np.arange(6) % 2).astype(dtype).reshape(2, 3)
    assert datatype_of(array) == datatype
    back = from_bytes(to_bytes(array), datatype, [2, 3], tensor="x")
    np.testing.assert_array_equal(back, array)
    assert back.dtype == dtype
    np.testing.assert_array_equal(from_json_data(to_json_data(array), datatype, [2, 3], tensor="x"), array)


def test_bytes_tensors_use_the_same_layout_as_tritonclient():
    array = np.array([b"a", b"", "\u00e9t\u00e9".encode()], dtype=object)
    assert to_bytes(array) == serialize_byte_tensor(array).item()
    back = from_bytes(serialize_byte_tensor(array).item(), "BYTES", [3], tensor="t")
    assert list(back) == list(deserialize_bytes_tensor(to_bytes(array)))


def test_non_finite_floats_are_null_in_json_which_has_no_infinities():
    array = np.array([[1.5, -np.inf], [np.nan, np.inf]], dtype=np.float32)
    assert to_json_data(array) == [1.5, None, None, None]
    assert to_json_data(np.array([0.25, 2.0])) == [0.25, 2.0]


def test_json_data_may_be_nested_like_the_shape():
    array = from_json_data([[1, 2], [3, 4]], "INT64", [2, 2], tensor="x")
    np.testing.assert_array_equal(array, [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    ("data", "datatype", "shape", "message"),
    [
        ([1, 2, 3], "FP32", [2, 2], "needs 4 elements"),
        (["a"], "INT32", [1], "must be numbers"),
        ([1.5], "INT32", [1], "must be integers"),
        ([300], "UINT8", [1], "out of range"),
        ([1], "FLOAT99", [1], "unsupported datatype"),
        ([1], "FP32", [-1], "negative dimension"),
        ("abc", "FP32", [1], "must be a list"),
    ],
)
def test_bad_json_tensors_raise_bad_request_naming_the_tensor(data, datatype, shape, message):
    with pytest.raises(BadRequest, match=message) as info:
        from_json_data(data, datatype, shape, tensor="images")
    assert "images" in info.value.message


def test_binary_data_of_the_wrong_size_is_a_bad_request():
    with pytest.raises(BadRequest, match="needs 16 bytes"):
        from_bytes(b"\0" * 15, "FP32", [4], tensor="x")
    with pytest.raises(BadRequest, match="need at least 4 bytes"):
        from_bytes(b"\1\0", "BYTES", [1], tensor="x")


@pytest.mark.parametrize(
    ("data", "shape", "message"),
    [
        (b"\3\0\0\0abc\0", [2], "expected 2 BYTES elements, got 1"),
        (b"\x09\0\0\0ab\0\0\0\0", [2], "element 0 runs past the end"),
        (b"\1\0\0\0a" + b"\0" * (1 << 20), [1], "1048576 bytes of data after its 1 BYTES elements"),
    ],
)
def test_binary_bytes_tensors_hold_exactly_their_shapes_elements(data, shape, message):
    with pytest.raises(BadRequest, match=message):
        from_bytes(data, "BYTES", shape, tensor="text")


def test_a_bytes_tensor_of_more_elements_than_any_model_takes_is_refused_before_it_is_read():
    count = MAX_BYTES_ELEMENTS + 1
    for decode in (
        lambda: from_bytes(b"\0" * 4 * count, "BYTES", [count, 1], tensor="text"),
        lambda: from_json_data([""] * count, "BYTES", [count, 1], tensor="text"),
    ):
        with pytest.raises(PayloadTooLarge, match=f"{count} BYTES elements; a tensor may hold at most"):
            decode()
    assert len(from_bytes(b"\0" * 4 * (count - 1), "BYTES", [count - 1], tensor="text")) == count - 1


def test_classification_strings_follow_triton_score_index_label():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], dtype=np.float32)
    out = classification(scores, 2, ["cat", "dog", "eel"], batched=True)
    assert out.shape == (2, 2)
    assert out[0, 0] == b"0.700000:1:dog"
    assert parse_classification(out[1, 1]) == (0.25, 1, "dog")  # ties keep the lower index first
    assert classification(scores[0], 5, None, batched=False)[0] == b"0.700000:1"


def test_a_binary_input_is_decoded_as_a_view_of_the_request_bytes_not_a_copy():
    body = b"header" + np.arange(12, dtype=np.float32).tobytes()
    array = from_bytes(memoryview(body)[6:], "FP32", [3, 4], tensor="x")
    assert np.shares_memory(array, np.frombuffer(body, dtype=np.uint8))
    assert not array.flags.writeable  # nothing downstream may scribble on a client's buffer
    np.testing.assert_array_equal(array, np.arange(12, dtype=np.float32).reshape(3, 4))


def test_a_strided_output_is_encoded_row_major():
    array = np.arange(12, dtype=np.float32).reshape(3, 4).T  # not C-contiguous
    assert to_bytes(array) == np.ascontiguousarray(array).tobytes()


@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
def test_typed_grpc_contents_decode_like_json_data(datatype):
    values = [b"a", b"", b"c", b"d", b"e", b"f"] if datatype == "BYTES" else [0, 1, 1, 0, 1, 0]
    if datatype == "BOOL":
        values = [bool(v) for v in values]
    np.testing.assert_array_equal(
        from_contents(values, datatype, [2, 3], tensor="x"),
        from_json_data(values, datatype, [2, 3], tensor="x"),
    )
    assert from_contents(values, datatype, [2, 3], tensor="x").dtype == DATATYPE_TO_NUMPY[datatype]


class Unreadable(list):
    """A repeated field whose values must not be read: only its length may be asked."""

    def __iter__(self):
        raise AssertionError("the values were read before the count was checked")


@pytest.mark.parametrize(
    ("values", "datatype", "message"),
    [
        (Unreadable([0] * 1000), "UINT8", "needs 4 elements, got 1000"),
        ([0, 256, 0, 0], "UINT8", "out of range for UINT8"),
        ([0, -129, 0, 0], "INT8", "out of range for INT8"),
        ([0, 70000, 0, 0], "UINT16", "out of range for UINT16"),
    ],
)
def test_typed_grpc_contents_are_counted_before_they_are_read_and_narrowed_in_range(
    values, datatype, message
):
    with pytest.raises(BadRequest, match=message):
        from_contents(values, datatype, [2, 2], tensor="images")
