"""KServe v2 gRPC messages to and from the gateway's types: a ModelInferRequest's tensors, parameters,
timeout and classification counts, and the ModelInferResponse of an answer. Shared by both gRPC servers
(Kiln's own and grpcio's) through :class:`~serving.protocol.grpc_servicer.InferenceServicer`; client
mistakes raise :class:`~serving.errors.BadRequest`.

An answer whose tensors hold ``PIECES_BYTES`` or more is, for Kiln's server, a :class:`RawAnswer`: the
message's bytes in pieces, each large tensor a view of its array. Built as one protobuf message, a
50 MB answer was copied five times on the event loop (tobytes, the message, the stream's wrapper,
``SerializeToString``, the frames): 240-460 ms during which no other request moved.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from serving.errors import BadRequest
from serving.execution.datatypes import datatype_of, numpy_dtype
from serving.protocol import tensors
from serving.protocol.grpc_call import Pieces
from serving.protocol.http1_writes import JOIN_BYTES, joined_runs
from serving.protocol.v2_codec import (
    check_priority,
    check_requested_output,
    check_sequence,
    classification_count,
    is_repeat,
    timeout_seconds,
)

LOOP_ELEMENTS = 1 << 20  # typed values decoded on the event loop (~50 ms); more go to a thread

# InferTensorContents field holding each datatype when a client sends typed contents instead of raw bytes.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def decode_inputs(request: service_pb2.ModelInferRequest) -> dict[str, np.ndarray]:
    """Numpy arrays from a ModelInferRequest (raw_input_contents, or typed contents per tensor)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; send one per input"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in arrays:
            raise BadRequest(f"input {tensor.name!r} appears more than once")
        shape = list(tensor.shape)
        if "shared_memory_region" in tensor.parameters:
            raise BadRequest(f"input {tensor.name!r}: shared memory is not supported here (send the data)")
        if raw:
            if tensor.HasField("contents"):  # Triton refuses the pair as well
                raise BadRequest(f"input {tensor.name!r}: contents must not be set with raw_input_contents")
            arrays[tensor.name] = tensors.from_bytes(raw[index], tensor.datatype, shape, tensor=tensor.name)
        else:
            arrays[tensor.name] = _from_contents(tensor, shape)
    return arrays


async def decoded_inputs(request: service_pb2.ModelInferRequest) -> dict[str, np.ndarray]:
    """:func:`decode_inputs`, in a thread when typed contents hold more than ``LOOP_ELEMENTS`` values
    (raw contents decode as views of the message; typed ones one value at a time, ~50 ns each)."""
    if request.raw_input_contents or _typed_values(request) <= LOOP_ELEMENTS:
        return decode_inputs(request)
    return await asyncio.to_thread(decode_inputs, request)


def _typed_values(request: service_pb2.ModelInferRequest) -> int:
    fields = (_CONTENTS_FIELD.get(tensor.datatype) for tensor in request.inputs)
    return sum(len(getattr(t.contents, f)) for t, f in zip(request.inputs, fields, strict=True) if f)


def _from_contents(tensor: Any, shape: list[int]) -> np.ndarray:
    """Decode the typed ``contents`` of one input tensor."""
    field = _CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        numpy_dtype(tensor.datatype, tensor=tensor.name)  # raises for unknown datatypes
        raise BadRequest(f"tensor {tensor.name!r}: {tensor.datatype} must be sent in raw_input_contents")
    others = [f.name for f, _ in tensor.contents.ListFields() if f.name != field]
    if others:  # values of another type are not this datatype's (Triton refuses them too)
        raise BadRequest(
            f"tensor {tensor.name!r}: {tensor.datatype} values go in contents.{field}, got {', '.join(others)}"
        )
    return tensors.from_contents(getattr(tensor.contents, field), tensor.datatype, shape, tensor=tensor.name)


_OutputTensor = service_pb2.ModelInferResponse.InferOutputTensor


def encode_response(
    response: Any, request: service_pb2.ModelInferRequest, pieces: bool = False
) -> service_pb2.ModelInferResponse | RawAnswer:
    """A ModelInferResponse carrying every output in raw_output_contents, in a stable order; with
    ``pieces`` (Kiln's server), a :class:`RawAnswer` of the same bytes where the outputs hold
    ``PIECES_BYTES`` or more.

    Built in one constructor call (not ``add()`` + ``extend`` per field: ~25 % less time per reply).
    """
    if pieces and sum([getattr(array, "nbytes", 0) for array in response.outputs.values()]) >= PIECES_BYTES:
        return raw_answer(response, request)
    described, raw = [], []
    for name, array in response.outputs.items():
        array = np.asarray(array)
        described.append(_OutputTensor(name=name, datatype=datatype_of(array), shape=array.shape))
        raw.append(tensors.to_bytes(array))
    return service_pb2.ModelInferResponse(
        model_name=response.model,
        model_version=response.version,
        id=response.request_id or request.id,
        outputs=described,
        raw_output_contents=raw,
    )


PIECES_BYTES = JOIN_BYTES  # an answer whose tensors hold this much leaves in pieces (RawAnswer)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited_tag(message_class: Any, field: str) -> bytes:
    return _varint(message_class.DESCRIPTOR.fields_by_name[field].number << 3 | 2)


_RAW_TAG = _length_delimited_tag(service_pb2.ModelInferResponse, "raw_output_contents")
_INFER_RESPONSE_TAG = _length_delimited_tag(service_pb2.ModelStreamInferResponse, "infer_response")


class RawAnswer(Pieces):
    """A ModelInferResponse as the bytes protobuf would write for it, in pieces: ``head`` the message
    without its raw_output_contents (serialized when written, so ``parameters`` may still change),
    then each of ``raw`` (bytes, or a view of an output's array) as raw_output_contents (its tag, its
    length, itself): where protobuf writes them too, as it writes fields in the order of their numbers
    and raw_output_contents is the last. Small pieces are joined; large ones stay as they are."""

    __slots__ = ("head", "raw")

    def __init__(self, head: service_pb2.ModelInferResponse, raw: list[bytes | memoryview]) -> None:
        self.head, self.raw = head, raw

    @property
    def parameters(self) -> Any:
        return self.head.parameters

    def pieces(self) -> list[bytes | memoryview]:
        parts: list[bytes | memoryview] = [self.head.SerializeToString()]
        for raw in self.raw:
            parts += (_RAW_TAG + _varint(len(raw)), raw)
        return joined_runs(parts)


class StreamedAnswer(Pieces):
    """A ModelStreamInferResponse carrying a :class:`RawAnswer` (no error_message), in pieces."""

    __slots__ = ("infer_response",)

    def __init__(self, infer_response: RawAnswer) -> None:
        self.infer_response = infer_response

    def pieces(self) -> list[bytes | memoryview]:
        inner = self.infer_response.pieces()
        return joined_runs([_INFER_RESPONSE_TAG + _varint(sum(map(len, inner))), *inner])


def raw_answer(response: Any, request: service_pb2.ModelInferRequest) -> RawAnswer:
    """:func:`encode_response`'s message as a :class:`RawAnswer`, each output a view of its array
    where it can be (:func:`~serving.protocol.tensors.wire_view`)."""
    described, raw = [], []
    for name, array in response.outputs.items():
        array = np.asarray(array)
        described.append(_OutputTensor(name=name, datatype=datatype_of(array), shape=array.shape))
        raw.append(tensors.wire_view(array))
    head = service_pb2.ModelInferResponse(
        model_name=response.model,
        model_version=response.version,
        id=response.request_id or request.id,
        outputs=described,
    )
    return RawAnswer(head, raw)


def stream_response(answer: service_pb2.ModelInferResponse | RawAnswer) -> Any:
    """A ModelStreamInferResponse carrying ``answer`` (a :class:`StreamedAnswer` for a RawAnswer)."""
    if isinstance(answer, RawAnswer):
        return StreamedAnswer(answer)
    return service_pb2.ModelStreamInferResponse(infer_response=answer)


def requested_outputs(request: service_pb2.ModelInferRequest) -> tuple[list[str] | None, dict[str, int]]:
    """The outputs a request names, each once (None: it names none, so every output), and
    ``{output: count}`` for those asking for Triton's classification extension; checked as HTTP's are
    (:func:`~serving.protocol.v2_codec.check_requested_output`, :func:`~serving.protocol.v2_codec.is_repeat`)."""
    names: list[str] = []
    counts: dict[str, int] = {}
    earlier: dict[str, int] = {}
    for out in request.outputs:
        check_requested_output(out.name, out.parameters)
        count = _classification(out)
        if not is_repeat(out.name, count, earlier):
            names.append(out.name)
            if count:  # 0 asks for none, as over HTTP
                counts[out.name] = count
    return names or None, counts


def _classification(out: Any) -> int:
    if "classification" not in out.parameters:
        return 0
    value = out.parameters["classification"]
    kind = value.WhichOneof("parameter_choice")
    count = getattr(value, kind) if kind is not None else None
    return classification_count(out.name, count)  # a bool, double or string is no count either


def request_parameters(parameters: Any) -> dict[str, Any]:
    """Plain Python values from a protobuf map of InferParameter (one with no value set is refused,
    and a ``priority`` or ``sequence_*`` as HTTP refuses it, an int64 ``sequence_id`` below 0 aside,
    which Triton's gRPC endpoint takes: :func:`~serving.protocol.v2_codec.check_sequence`; a
    ``sequence_id`` in a ``uint64_param`` is refused, as Triton refuses it, whatever its value)."""
    values = {}
    for key, value in parameters.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is None:
            raise BadRequest(f"parameter {key!r} has no value")
        if key == "sequence_id" and choice == "uint64_param":
            raise BadRequest(
                "parameter 'sequence_id' must be an int64_param or a string_param, got a uint64_param"
            )
        values[key] = getattr(value, choice)
    check_priority(values)
    check_sequence(values, signed_ids=True)
    return values


def request_timeout(request: service_pb2.ModelInferRequest) -> float | None:
    """The request's own ``timeout`` parameter (Triton's, microseconds) in seconds; None when not given.
    Kept apart from the gRPC deadline: only this one may shorten a model's queue timeout. Refused
    unless a positive integer, as HTTP refuses it (a string, a double or a negative one was ignored,
    the request then queued without the limit its client asked for; Triton refuses those too)."""
    if "timeout" not in request.parameters:
        return None
    value = request.parameters["timeout"]
    kind = value.WhichOneof("parameter_choice")  # a double, string or bool value is refused as such
    return timeout_seconds(getattr(value, kind) if kind is not None else None)


def call_deadline(context: grpc.aio.ServicerContext) -> float | None:
    """Seconds left of the client's gRPC deadline; None when it sent none."""
    remaining = context.time_remaining()
    return None if remaining is None else max(remaining, 0.0)
