"""Triton's generate extension over HTTP: ``POST /v2/models/{name}[/versions/{v}]/generate`` and
``.../generate_stream``, the text-oriented endpoints LLM-era clients speak (Triton's
``extension_generate.md``), mapped onto any model as Triton maps them.

A request is one JSON object. Each key that names an input of the model is that input's value, a
scalar or a flat list, shaped as the model's metadata says (fixed dimensions take their share of the
values, the innermost dynamic one the rest, other dynamic ones 1: ``{"text": "..."}`` is a ``[1, 1]``
BYTES tensor of a translator); every other key, and every key of an optional ``parameters`` object,
is a request parameter (a translator's ``beam_size``, ``max_length``, ...; ``timeout`` and ``priority``
are the request's own, read as infer reads them); ``id`` is the request's id.
The answer is one object: ``model_name``, ``model_version``, ``id`` where one was sent, and each output
by name, a scalar where it holds one value, else its values as a flat list. ``generate_stream`` sends
the same object as one Server-Sent Event (``data: {...}``): every model here answers a request once.
Failures are the gateway's JSON errors with their statuses, which is what Triton's ``{"error": ...}``
object is too.

A parameter is a string, a number or a boolean, as Triton (2.51) takes them (a translator's ``alpha`` is
a number). Deliberate differences from Triton: a key given both at the top and in ``parameters`` is a
400 (Triton keeps one of them silently); a string that is not valid Unicode (a lone surrogate) is a 400
(Triton's parser answers 500); a float that is not finite (a padding hypothesis's score) is ``null``
(Triton writes ``-Infinity``, which is not JSON); and on ``generate_stream`` an error the model raises
is a JSON error body with its status, as every other failure (Triton sends those as one ``data:``
event holding the error object, with the error's status).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response

from serving.errors import BadRequest, Deadline
from serving.execution.base import InferRequest, InferResponse, ModelMetadata, TensorMeta, model_parameters
from serving.metrics import CLIENT_LEFT, observed_infer
from serving.protocol.deps import BackendDep, MetricsDep, SettingsDep, VersionDep
from serving.protocol.limits import request_body
from serving.protocol.request_values import parse_json, unicode_text
from serving.protocol.responses import OVERLOAD, VERSION_PARAMETER, errors
from serving.protocol.tensors import from_json_data, to_json_data
from serving.protocol.translate import until_client_leaves
from serving.protocol.v2_codec import check_parameter_values, timeout_seconds

router = APIRouter(prefix="/v2", tags=["kserve-v2"])

STREAM_MEDIA_TYPE = "text/event-stream; charset=utf-8"  # Triton's, for generate_stream
_SCALAR = {"type": ["string", "number", "boolean"]}
GENERATE_REQUEST = {
    "type": "object",
    "description": "each key naming a model input is that input (a value or a flat list of values); "
    "every other key, and each key of `parameters`, is a request parameter; `id` is the request's id",
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "additionalProperties": _SCALAR},
    },
    "additionalProperties": {"anyOf": [_SCALAR, {"type": "array", "items": _SCALAR}]},
    "example": {"text": "i bought twenty-one red apples", "parameters": {"beam_size": 4}},
}
GENERATE_RESPONSE = {
    "type": "object",
    "required": ["model_name", "model_version"],
    "properties": {
        "id": {"type": "string"},
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
    },
    "additionalProperties": True,
    "example": {"model_name": "transformer", "model_version": "1", "translation": "...", "score": -0.61},
}
STREAM_EVENT = {  # OpenAPI 3.1: the schema of one Server-Sent Event, its data the answer as JSON
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": GENERATE_RESPONSE,
        },
        "event": {"type": "string"},
    },
}
GENERATE_ERRORS = errors(400, 404, 413, 415, 422, *OVERLOAD)  # 422: options a model refuses (beam_size)


def generate_request(body: Any, meta: ModelMetadata, version: str) -> InferRequest:
    """The infer request a generate body maps to on the model ``meta`` describes (400s name the key)."""
    if not isinstance(body, dict):
        raise BadRequest("a generate request must be a JSON object")
    request_id = body.get("id", "")
    if not isinstance(request_id, str):
        raise BadRequest(f"'id' must be a string, got {type(request_id).__name__}")
    unicode_text(request_id, "'id'")
    nested = body.get("parameters", {})
    if not isinstance(nested, dict):
        raise BadRequest(f"'parameters' must be a JSON object, got {type(nested).__name__}")
    inputs = {m.name: m for m in meta.inputs}
    tensors, parameters = {}, {}
    for key, value in [*((k, v) for k, v in body.items() if k not in ("id", "parameters")), *nested.items()]:
        if key in tensors or key in parameters:
            raise BadRequest(f"{key!r} is given twice (at the top and in 'parameters')")
        if key in inputs:
            tensors[key] = _tensor(inputs[key], value)
        elif isinstance(value, (str, int, float)):  # bool is an int
            unicode_text(key, f"parameter name {key!r}")
            parameters[key] = unicode_text(value, f"parameter {key!r}") if isinstance(value, str) else value
        else:
            kind = "null" if value is None else type(value).__name__
            raise BadRequest(
                f"{key!r} is neither an input of model {meta.name!r} (its inputs: {', '.join(inputs)}) nor a "
                f"parameter (a string, number or boolean), got {kind}"
            )
    check_parameter_values(parameters)  # as infer checks them: an integer past 64 bits is a 400
    timeout = parameters.get("timeout")
    return InferRequest(
        model=meta.name,
        inputs=tensors,
        version=version,
        parameters=model_parameters(parameters),
        request_id=request_id,
        timeout_s=None if timeout is None else timeout_seconds(timeout),
        priority=parameters.get("priority", 0),
    )


def _tensor(meta: TensorMeta, value: Any) -> Any:
    """One input from its value or flat list, shaped as Triton's generate shapes it."""
    values = value if isinstance(value, list) else [value]
    if any(isinstance(v, (list, dict)) or v is None for v in values):
        raise BadRequest(f"input {meta.name!r}: a generate request takes a value or a flat list of values")
    count, shape = len(values), list(meta.shape)
    for d in reversed(shape):  # fixed dimensions take their share of the values
        if d != -1:
            if d == 0 or count % d:
                raise BadRequest(
                    f"input {meta.name!r}: {len(values)} value(s) do not fit its shape {meta.shape}"
                )
            count //= d
    for i in reversed(range(len(shape))):  # the innermost dynamic one takes the rest, the others 1
        if shape[i] == -1:
            shape[i], count = count, 1
    if count != 1:
        raise BadRequest(f"input {meta.name!r}: {len(values)} value(s) do not fit its shape {meta.shape}")
    return from_json_data(values, meta.datatype, shape, tensor=meta.name)


def generate_response(response: InferResponse, request: InferRequest) -> dict[str, Any]:
    """Triton's generate answer: the model, the id where one was sent, each output by name."""
    answer: dict[str, Any] = {"model_name": response.model, "model_version": response.version}
    if request.request_id:
        answer["id"] = request.request_id
    for name, value in response.parameters.items():
        answer.setdefault(name, value)
    for name, array in response.outputs.items():
        data = to_json_data(array)
        answer[name] = data[0] if len(data) == 1 else data
    return answer


def parse_generate(body: bytes, meta: ModelMetadata, version: str) -> InferRequest:
    """A generate body's JSON parsed and mapped to its infer request (run in the JSON helper process
    for a large body: a module-level function whose result and errors pickle)."""
    return generate_request(parse_json(body, "generate request"), meta, version)


async def _generate(
    request: Request,
    backend: Any,
    metrics: Any,
    max_body_bytes: int,
    name: str,
    version: str,
    stream: bool,
    timeout_s: float | None = None,
) -> Response:
    meta = backend.metadata(name, version)  # unknown model -> 404 before the body is read
    body = await request_body(request, max_body_bytes)  # gzip/deflate inflated, held in the budget
    # a large body is parsed off the event loop, as infer's (serving/protocol/json_offload.py), held to
    # the request's deadline (``timeout_s`` from now) while it waits there; the model gets what is left
    offload = request.app.state.json_offload
    deadline = Deadline.from_now(timeout_s) if timeout_s is not None and offload.offloads(len(body)) else None
    infer_request = await offload.call(len(body), parse_generate, body, meta, version, deadline=deadline)
    if deadline is not None:
        infer_request.deadline_s = min(deadline.left(), infer_request.deadline_s or deadline.seconds)
    result = await until_client_leaves(request, observed_infer(backend, metrics, infer_request))
    if result is None:  # its client left: nobody to answer
        return Response(status_code=CLIENT_LEFT)
    text = json.dumps(generate_response(result, infer_request), allow_nan=False)
    if stream:
        return Response(f"data: {text}\n\n", media_type=STREAM_MEDIA_TYPE)
    return Response(text, media_type="application/json")


def _route(suffix: str, stream: bool, summary: str) -> Callable[..., Any]:
    """POST ``/models/{name}/<suffix>`` and its versioned twin."""
    if stream:
        content: dict[str, Any] = {STREAM_MEDIA_TYPE: {"schema": STREAM_EVENT}}
    else:
        content = {"application/json": {"schema": GENERATE_RESPONSE}}
    responses = {200: {"description": "the answer", "content": content}, **GENERATE_ERRORS}
    body = {"requestBody": {"required": True, "content": {"application/json": {"schema": GENERATE_REQUEST}}}}

    async def endpoint(
        name: str,
        request: Request,
        backend: BackendDep,
        metrics: MetricsDep,
        settings: SettingsDep,
        version: VersionDep,
    ) -> Response:
        max_body_bytes, timeout_s = settings.max_body_bytes, settings.request_timeout_s
        return await _generate(request, backend, metrics, max_body_bytes, name, version, stream, timeout_s)

    router.post(
        f"/models/{{name}}/versions/{{version}}/{suffix}",
        summary=f"{summary}, on one version",
        responses=responses,
        openapi_extra={**body, "parameters": [VERSION_PARAMETER]},
    )(endpoint)
    router.post(f"/models/{{name}}/{suffix}", summary=summary, responses=responses, openapi_extra=body)(
        endpoint
    )
    return endpoint


generate_endpoint = _route("generate", False, "Generate (Triton's generate extension)")
generate_stream_endpoint = _route(
    "generate_stream", True, "Generate as Server-Sent Events (Triton's generate extension)"
)
