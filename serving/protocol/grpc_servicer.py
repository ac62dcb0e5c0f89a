"""KServe v2 gRPC servicer (``inference.GRPCInferenceService``) over any gateway :class:`Backend`: the
RPCs both gRPC servers serve (started by :mod:`serving.protocol.grpc_server`).

Uses the protobuf stubs shipped in ``tritonclient.grpc`` so ``tritonclient.grpc`` talks to the gateway
exactly as it talks to Triton. Tensors travel in ``raw_input_contents`` / ``raw_output_contents`` (the
layout of :mod:`serving.protocol.tensors`); typed ``contents`` are accepted too. Client mistakes come back as
gRPC status codes derived from :class:`ServingError`, never as INTERNAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from serving.errors import DeadlineExceeded, PayloadTooLarge, ServingError, Unavailable, is_models_answer
from serving.execution.base import Backend, InferRequest, model_parameters
from serving.execution.model_versions import parse_grpc_version
from serving.metrics import COUNTED, DEADLINE_SLACK_S, GatewayMetrics, failure_status, observed_infer
from serving.protocol import grpc_codec
from serving.protocol.h2_wire import bounded_message
from serving.protocol.repository_index import known_metadata, loaded_metadata, repository_index
from serving.protocol.statistics import model_statistics
from serving.protocol.v2_codec import (
    EXTENSIONS,
    NOT_SERVED,
    SERVER_NAME,
    server_version,
)

log = logging.getLogger("serving.protocol.grpc_server")  # the gRPC front end's log, whichever part writes it

# HTTP status of a ServingError -> gRPC status code (as Triton maps its own errors).
STATUS_TO_CODE = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.UNIMPLEMENTED,  # an HTTP Content-Encoding; gRPC's own is UNIMPLEMENTED too
    501: grpc.StatusCode.UNIMPLEMENTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# The refusals Kiln's server makes before a message is parsed (serving/protocol/grpc_call.py), by gRPC
# code, as the errors HTTP answers the same refusals with: counted under those statuses.
UNPARSED_REFUSALS = {
    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]: PayloadTooLarge,  # its length prefix past the limit
    grpc.StatusCode.UNAVAILABLE.value[0]: Unavailable,  # the body budget
    grpc.StatusCode.DEADLINE_EXCEEDED.value[0]: DeadlineExceeded,  # not arrived whole in time
}


async def _abort(context: grpc.aio.ServicerContext, error: ServingError) -> None:
    """End the RPC with the gRPC code of ``error`` (and its Retry-After as trailing metadata)."""
    code = STATUS_TO_CODE.get(error.status, grpc.StatusCode.INTERNAL)
    if error.retry_after is not None:
        context.set_trailing_metadata((("retry-after", f"{error.retry_after:g}"),))
    try:
        await context.abort(code, bounded_message(error.message))  # a message echoing client text may be long
    except grpc.aio.InternalError:  # grpcio's: its core ended the call first (its deadline passed as the
        # backend's own ran out, its client gone), so no status can be sent: nobody is left to answer, as
        # for a call cancelled (grpcio logged the failed send as an ERROR with a traceback)
        raise asyncio.CancelledError from None


# Requests of one stream running, or answered and waiting for their turn to be sent; the rest wait in
# the stream's buffer (held in the body budget on Kiln's server, behind HTTP/2 flow control on
# grpcio's) instead of each becoming a task: a client sending tiny messages fast made one task per
# message, bounded only by the budget's bytes.
STREAM_IN_FLIGHT = 1024

# The service's unary methods the gateway does not serve, each with what to do instead (v2_codec).
NOT_SERVED_METHODS = {
    **{
        f"{kind}SharedMemory{op}": NOT_SERVED["shared_memory"]
        for kind in ("System", "Cuda")
        for op in ("Status", "Register", "Unregister")
    },
    "RepositoryModelLoad": NOT_SERVED["model_load"],
    "RepositoryModelUnload": NOT_SERVED["model_load"],
    "TraceSetting": NOT_SERVED["trace"],
    "LogSettings": NOT_SERVED["logging"],
}


def _not_served(method: str) -> Any:
    async def refuse(self, request, context):  # noqa: ANN001, ANN202, ARG001
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method}: {NOT_SERVED_METHODS[method]}")

    refuse.__name__ = refuse.__qualname__ = method
    return refuse


FINAL_RESPONSE = "triton_final_response"  # the parameter Triton sets on each answer of a stream


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The KServe v2 RPCs Kiln serves; the rest stay UNIMPLEMENTED. With ``metrics``, every ModelInfer
    call is counted in the same request series as HTTP's (outcome, end-to-end latency, in flight).
    ``pieces``: a large answer is handed over in pieces (grpc_codec.RawAnswer), which only Kiln's server
    writes; grpcio's needs protobuf messages."""

    def __init__(self, backend: Backend, metrics: GatewayMetrics | None = None, pieces: bool = False) -> None:
        self.backend = backend
        self.metrics = metrics
        self.pieces = pieces

    async def ServerLive(self, request, context):  # noqa: N802 (gRPC method names)
        return service_pb2.ServerLiveResponse(live=self.backend.is_live())

    async def ServerReady(self, request, context):  # noqa: N802
        return service_pb2.ServerReadyResponse(ready=await self.backend.is_ready())

    async def ModelReady(self, request, context):  # noqa: N802
        try:
            ready = await self.backend.model_ready(request.name, parse_grpc_version(request.version))
        except ServingError as error:
            if error.status != 404:
                await _abort(context, error)
            ready = False
        return service_pb2.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request, context):  # noqa: N802
        return service_pb2.ServerMetadataResponse(
            name=SERVER_NAME, version=server_version(), extensions=EXTENSIONS
        )

    async def ModelMetadata(self, request, context):  # noqa: N802
        try:
            meta = await loaded_metadata(self.backend, request.name, parse_grpc_version(request.version))
        except ServingError as error:
            await _abort(context, error)
        reply = service_pb2.ModelMetadataResponse(
            name=meta.name, versions=meta.versions, platform=meta.platform
        )
        for target, metas in ((reply.inputs, meta.inputs), (reply.outputs, meta.outputs)):
            for tensor in metas:
                target.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        return reply

    async def ModelConfig(self, request, context):  # noqa: N802
        try:
            version = parse_grpc_version(request.version)
            await loaded_metadata(self.backend, request.name, version)  # as Triton: none of a failed model
            config = self.backend.config(request.name, version)
        except ServingError as error:
            await _abort(context, error)
        message = json_format.ParseDict(config, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)
        return service_pb2.ModelConfigResponse(config=message)

    async def ModelStatistics(self, request, context):  # noqa: N802
        """Triton's statistics extension (serving.protocol.statistics), as ``GET /v2/models[/{name}]/stats``."""
        if self.metrics is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "statistics need the gateway's metrics")
        try:
            stats = await model_statistics(
                self.backend, self.metrics, request.name, parse_grpc_version(request.version)
            )
        except ServingError as error:
            await _abort(context, error)
        return json_format.ParseDict({"model_stats": stats}, service_pb2.ModelStatisticsResponse())

    async def RepositoryIndex(self, request, context):  # noqa: N802
        """Triton's repository index (serving.protocol.repository_index), as ``POST /v2/repository/index``."""
        index = service_pb2.RepositoryIndexResponse
        found = await repository_index(self.backend, request.ready)
        return index(models=[index.ModelIndex(**entry) for entry in found])

    async def ModelInfer(self, request, context):  # noqa: N802
        try:
            return await self._infer(request, context)
        except ServingError as error:
            self._refused(request.model_name, error, error.status, request.model_version)
            await _abort(context, error)
        except asyncio.CancelledError as error:  # before its model ran, too: its inputs decoding
            self._cancelled(request, error, grpc_codec.call_deadline(context))
            raise
        except Exception as error:  # a bug of ours: log it, answer INTERNAL, keep serving
            self._refused(request.model_name, error, 500, request.model_version)
            log.exception("ModelInfer failed for model %r", request.model_name)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}")

    async def ModelStreamInfer(self, request_iterator, context):  # noqa: N802
        """Triton's streaming infer, for models that answer once per request (every model here): each
        request on the stream runs as it arrives, at once, as a ModelInfer call would (so the batcher
        merges a stream's requests as it merges calls), and is answered in a response of its own, in
        the order the requests came, as Triton answers a model that is not decoupled (a client may
        pair answers with requests by order: ids are optional). A request that fails gets
        ``error_message`` with its ``id`` echoed (:func:`_stream_error`), in its turn, and the stream
        goes on, as Triton's does; every answer carries Triton's ``triton_final_response: true`` (a
        request's one answer is its last) but, as Triton's, an error refused before the model took it.
        Up to ``STREAM_IN_FLIGHT`` requests are running or answered but not yet sent; the next ones
        wait in the stream. Served by both gRPC servers
        (Kiln's: serving.protocol.h2_streams)."""
        turns: asyncio.Queue[asyncio.Task | None] = asyncio.Queue()  # each request's answer, in order
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)
        running: set[asyncio.Task] = set()
        unstarted: dict[asyncio.Task, Any] = {}  # the requests read whose tasks have not begun yet

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await slots.acquire()  # no task per message past the bound
                    task = asyncio.create_task(self._stream_answer(request, context, unstarted))
                    running.add(task)
                    unstarted[task] = request
                    turns.put_nowait(task)
            finally:
                turns.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (head := await turns.get()) is not None:
                if not head.done() and not reader.done():  # a failed read ends the call at once
                    await asyncio.wait((head, reader), return_when=asyncio.FIRST_COMPLETED)
                if reader.done() and not reader.cancelled() and reader.exception() is not None:
                    break
                reply = await head
                running.discard(head)
                slots.release()
                yield reply
            await reader  # a failed read (the client's stream broke) ends the call with it
        finally:
            reader.cancel()
            for task in running:
                task.cancel()
            for request in unstarted.values():  # cancelled before they began: counted all the same
                self.unserved(request, grpc_codec.call_deadline(context))

    async def _stream_answer(self, request: Any, context: Any, unstarted: dict[asyncio.Task, Any]) -> Any:
        """The stream's answer to one request: its ModelStreamInferResponse, or its error's."""
        unstarted.pop(asyncio.current_task(), None)  # begun: counted from here on as any call is
        final = True
        try:
            reply = grpc_codec.stream_response(await self._infer(request, context))
        except asyncio.CancelledError as error:  # as ModelInfer's
            self._cancelled(request, error, grpc_codec.call_deadline(context))
            raise
        except ServingError as error:
            self._refused(request.model_name, error, error.status, request.model_version)
            if isinstance(error, DeadlineExceeded):
                await _let_the_stream_end(context)
            final = is_models_answer(error)
            reply = _stream_error(request, error.message, final)
        except Exception as error:  # a bug of ours: logged, this request answered, the stream goes on
            self._refused(request.model_name, error, 500, request.model_version)
            log.exception("ModelStreamInfer failed for model %r", request.model_name)
            final = is_models_answer(error)
            reply = _stream_error(request, f"internal error: {type(error).__name__}", final)
        # each request's one answer is its last, as Triton marks its answers on a stream (clients of
        # decoupled models read the flag to know a request is done); Triton leaves it off an error
        # refused before the model took the request, which its clients read as final all the same
        if final:
            reply.infer_response.parameters[FINAL_RESPONSE].bool_param = True
        return reply

    def _refused(self, name: str, error: BaseException, status: int, version: str = "") -> None:
        """A call that ended before its model ran (its tensors or options refused), counted for the
        model it names where that is one of the backend's (unknown names add no series), in the
        version it asks for (an unknown one adds none either: :meth:`GatewayMetrics.versioned`)."""
        if self.metrics is None or getattr(error, COUNTED, False):
            return
        try:
            self.backend.metadata(name, "")
        except ServingError:
            return
        with contextlib.suppress(ServingError):  # ``01``, `` 1``, ``+1``: version 1, as the call read it
            version = parse_grpc_version(version)
        self.metrics.refused(name, error, status, version)

    def refused_unparsed(self, request_class: Any, head: bytes, code: int, details: str) -> None:
        """A call Kiln's server refused before parsing its message (grpc_call.Call.refused: its length
        prefix past the limit, the body budget, or the message not whole by its deadline or the read
        timeout), shown its first bytes: a ModelInfer call is counted
        as HTTP counts a body refused unread, for the model its message names where ``model_name``
        arrived with them and is one of the backend's (grpcio's server refuses these in gRPC core,
        unseen)."""
        error_class = UNPARSED_REFUSALS.get(code)
        if self.metrics is None or error_class is None or request_class is not service_pb2.ModelInferRequest:
            return
        name = leading_model_name(head)
        if name is not None:
            error = error_class(details)
            self._refused(name, error, error.status, leading_version(head))

    def unserved(self, request: Any, left_s: float | None) -> None:
        """A call Kiln's server ended after parsing its message but before this servicer started on it
        (its client's reset, its deadline or its connection lost, read in the same turn of the event
        loop as the call), or a stream's request read but cancelled with its stream before its answer
        began: a ModelInfer request is counted as :func:`~serving.metrics.observed` counts a
        cancelled request (504 where ``left_s``, the time its deadline left, was due; else 499), with
        no latency, for the model it names where that is one of the backend's."""
        self._cancelled(request, asyncio.CancelledError(), left_s)

    def _cancelled(self, request: Any, error: asyncio.CancelledError, left_s: float | None) -> None:
        """A ModelInfer request cancelled before :func:`~serving.metrics.observed` counted it (unless it
        did: ``error`` is then marked): before its servicer started (:meth:`unserved`), or after, while
        its inputs decoded in a thread, which ended the call uncounted. 504 where ``left_s`` was due."""
        if self.metrics is None or not isinstance(request, service_pb2.ModelInferRequest):
            return
        due = left_s is not None and left_s <= DEADLINE_SLACK_S
        status = failure_status(error, due, self.metrics.cut_status)
        self._refused(request.model_name, error, int(status), request.model_version)

    async def _infer(self, request, context) -> service_pb2.ModelInferResponse | grpc_codec.RawAnswer:
        """Decode, run on the backend, encode. The outputs' classification counts go in their own field:
        a request-level parameter named ``classification`` is the model's, as Triton hands it on. An
        unknown model or version is NOT_FOUND before its tensors are decoded, as HTTP answers 404 (it
        was a tensor's INVALID_ARGUMENT, after decoding up to 64 MiB for nothing)."""
        version = parse_grpc_version(request.model_version)
        await known_metadata(self.backend, request.model_name, version)  # unknown: NOT_FOUND, no label
        given = grpc_codec.request_parameters(request.parameters)
        parameters = model_parameters(given)
        outputs, classification = grpc_codec.requested_outputs(request)
        infer_request = InferRequest(
            model=request.model_name,
            version=version,
            inputs=await grpc_codec.decoded_inputs(request),
            outputs=outputs,
            parameters=parameters,
            request_id=request.id,
            timeout_s=grpc_codec.request_timeout(
                request
            ),  # both only shorten the server's limit (InferRequest.time_limit)
            deadline_s=grpc_codec.call_deadline(context),
            priority=given.get("priority", 0),
            classification=classification,
        )
        if self.metrics is None:
            return grpc_codec.encode_response(await self.backend.infer(infer_request), request, self.pieces)
        return grpc_codec.encode_response(
            await observed_infer(self.backend, self.metrics, infer_request), request, self.pieces
        )


# How long a stream's request whose deadline was the stream's own waits for its server to end the stream
STREAM_DEADLINE_GRACE_S = 0.5


async def _let_the_stream_end(context: Any) -> None:
    """A stream's request that ran out of time at the stream's own deadline (its ``grpc-timeout``, which
    bounds each of its requests' waits) is answered by the stream's end, DEADLINE_EXCEEDED as the client
    reads it on its own clock: an error answer sent at the same moment raced it, and the client saw one
    request's empty error instead of the stream's status. The gRPC server cancels this task as it ends
    the call; a request whose own limit (``--request-timeout-s``, KServe's ``timeout``) ran out first, or
    a stream the server does not end within ``STREAM_DEADLINE_GRACE_S``, is answered its 504 as before."""
    left = grpc_codec.call_deadline(context)
    if left is not None and left < STREAM_DEADLINE_GRACE_S / 10:
        await asyncio.sleep(left + STREAM_DEADLINE_GRACE_S)


def _stream_error(request: Any, message: str, models_answer: bool) -> service_pb2.ModelStreamInferResponse:
    """A stream's answer to a request that failed, as Triton 2.51 builds it: its ``error_message``, and
    in ``infer_response`` its ``id``, so a client with several requests in flight on the stream knows
    which one failed (by its id, or by its turn: answers come in the requests' order). Where the model
    answered the error (``models_answer``: serving.errors.MODELS_ANSWER) also the ``model_name`` and
    ``model_version`` as the request wrote them (an empty version stays empty); a request the server
    refused before its model took it (an unknown model or version, a tensor that does not fit) gets
    its id alone, as Triton's does. The message is cut as a unary call's status is: one echoing a 1 MB
    input name was 4 MB of escapes, past a client's default 4 MiB receive limit, which ended the stream."""
    answer = service_pb2.ModelInferResponse(id=request.id)
    if models_answer:
        answer.model_name, answer.model_version = request.model_name, request.model_version
    return service_pb2.ModelStreamInferResponse(error_message=bounded_message(message), infer_response=answer)


def leading_model_name(head: bytes) -> str | None:
    """The ``model_name`` of a ModelInferRequest from its first bytes: field 1, which protobuf writes
    before the others (its tag, a varint length, the UTF-8 name); None where they do not hold it whole."""
    found = _leading_string(head, 0, 0x0A)
    return None if found is None else found[0]


def leading_version(head: bytes) -> str:
    """The ``model_version`` of a ModelInferRequest from its first bytes: field 2, which protobuf writes
    right after the name where it is set; "" (the latest) where they do not hold it whole. A refusal
    of a call for version 1 of a model also served in version 2 counted as version 2's."""
    name = _leading_string(head, 0, 0x0A)
    version = None if name is None else _leading_string(head, name[1], 0x12)
    return "" if version is None else version[0]


def _leading_string(head: bytes, at: int, tag: int) -> tuple[str, int] | None:
    """The UTF-8 string field of ``tag`` (its tag byte: field number and length-delimited wire type)
    at ``at`` in ``head``, and where it ends; None where it is not there whole."""
    if head[at : at + 1] != bytes((tag,)):
        return None
    length, at = 0, at + 1
    for shift in range(0, 35, 7):
        if at >= len(head):
            return None
        byte = head[at]
        at += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
    else:
        return None
    if at + length > len(head):
        return None
    try:
        return head[at : at + length].decode(), at + length
    except UnicodeDecodeError:
        return None


for _method in NOT_SERVED_METHODS:  # UNIMPLEMENTED with what to do instead, over Kiln's server and grpcio's
    setattr(InferenceServicer, _method, _not_served(_method))
