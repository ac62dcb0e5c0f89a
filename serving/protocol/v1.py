"""The friendly REST API: list models and classify PNG/JPEG images (base64 JSON or multipart files).

Built only on the Backend protocol and kiln.json, so it works the same over ONNX Runtime or Triton;
a translate router can sit beside it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.errors import BadRequest, Deadline, PayloadTooLarge, ServingError, UnprocessableInput
from serving.execution.base import InferRequest
from serving.execution.entry_config import image_input_problems
from serving.execution.repository import RepositoryEntry
from serving.metrics import CLIENT_LEFT, GatewayMetrics, observed
from serving.protocol.deps import BackendDep, MetricsDep, RepositoryDep, SettingsDep, validated
from serving.protocol.image_decodes import ImageLimits, decode_images
from serving.protocol.images import PNG_SIGNATURE, decode_base64
from serving.protocol.limits import CONTENT_ENCODING_PARAMETER, request_body
from serving.protocol.repository_index import ready_together
from serving.protocol.request_values import JsonInt, parse_json
from serving.protocol.responses import OVERLOAD, errors
from serving.protocol.translate import until_client_leaves
from serving.settings import Settings

router = APIRouter(prefix="/v1", tags=["friendly"])


class ClassifyRequest(BaseModel):
    # JsonInt: 2.0 is the integer 2, 2.5 and "2" are refused; an unknown field is refused too (422)
    model_config = ConfigDict(strict=True, extra="forbid")

    images: list[str] = Field(min_length=1, description="base64-encoded PNG or JPEG images")
    top_k: JsonInt = Field(5, ge=1, description="classes returned per image")


class Prediction(BaseModel):
    label: str
    index: int
    score: float


class ClassifyResponse(BaseModel):
    model: str
    predictions: list[list[Prediction]] = Field(description="per image, the top_k classes, best first")


class ModelSummary(BaseModel):
    name: str
    task: str
    ready: bool
    versions: list[str]
    inputs: list[dict[str, Any]]
    labels: int


# The multipart form's fields: any other is refused (422), as an unknown JSON field is
FORM_FIELDS = ("files", "top_k")

CLASSIFY_BODY = {
    "parameters": [CONTENT_ENCODING_PARAMETER],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": ClassifyRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "additionalProperties": False,
                    "properties": {
                        "files": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": "string", "format": "binary"},
                        },
                        "top_k": {"type": "integer", "minimum": 1, "default": 5},
                    },
                }
            },
        },
    },
}


def document_limits(openapi: dict[str, Any], settings: Any) -> None:
    """Write this gateway's image count (413 above it) and top_k (422 above it) limits into the schema."""
    body = openapi["paths"]["/v1/models/{name}/classify"]["post"]["requestBody"]["content"]
    for content in body.values():
        properties = content["schema"]["properties"]
        images = properties.get("images") or properties["files"]
        images["maxItems"] = settings.max_images
        properties["top_k"]["maximum"] = settings.max_top_k


@router.get("/models", summary="Models in the repository")
async def list_models(backend: BackendDep, repository: RepositoryDep) -> list[ModelSummary]:
    """Every entry, a failed one listed not ready; their readiness asked together (a hung Triton made
    a listing of N models wait N probe timeouts)."""
    names = repository.names()
    loaded = [name for name in names if repository.entries.get(name)]
    ready = dict(zip(loaded, await ready_together(backend, [(name, "") for name in loaded]), strict=True))
    summaries = []
    for name in names:
        entry = repository.entries.get(name)
        inputs = (
            [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in entry.inputs()]
            if entry
            else []
        )
        labels = len(next(iter(entry.labels.values()), [])) if entry else 0
        summaries.append(
            ModelSummary(
                name=name,
                task=entry.task if entry else "",
                ready=ready.get(name, False),  # failed to load: listed, not ready
                versions=entry.versions if entry else [],
                inputs=inputs,
                labels=labels,
            )
        )
    return summaries


@router.post(
    "/models/{name}/classify",
    summary="Classify images",
    openapi_extra=CLASSIFY_BODY,
    responses=errors(400, 404, 413, 415, 422, *OVERLOAD),
)
async def classify(
    name: str,
    request: Request,
    backend: BackendDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    repository: RepositoryDep,
) -> ClassifyResponse:
    entry = repository.get(name)
    if entry.task != "classify":
        raise BadRequest(
            f"model {name!r} is a {entry.task or 'non-classify'} model; it cannot classify images"
        )
    _check_image_input(entry)
    blobs, top_k, deadline = await _read_images(request, settings)
    if top_k > settings.max_top_k:
        raise UnprocessableInput(f"top_k {top_k} exceeds the limit of {settings.max_top_k}")
    work = _decoded_scores(request, entry, blobs, backend, metrics, settings, deadline)
    scores = await until_client_leaves(request, work)
    if scores is None:
        return Response(status_code=CLIENT_LEFT)  # sent nowhere: the server drops it
    labels = next(iter(entry.labels.values()), [])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    predictions = [
        [Prediction(label=_label(labels, int(j)), index=int(j), score=float(row_scores[j])) for j in row]
        for row, row_scores in zip(order, scores, strict=True)
    ]
    return ClassifyResponse(model=name, predictions=predictions)


async def _decoded_scores(
    request: Request,
    entry: RepositoryEntry,
    blobs: list[bytes],
    backend,
    metrics: GatewayMetrics,
    settings: Settings,
    deadline: Deadline,
) -> np.ndarray:
    """The images decoded and scored, the work :func:`until_client_leaves` drops when the client
    leaves (before, a departed client's images were decoded, queued and run for nobody, and counted a
    success); one that leaves before its images reach the model is a 499 here (:func:`observed`
    counts it from there). Its decoding is held to its ``deadline`` and the model given what it leaves
    (its deadline started at the model's queue, after every wait for a decode slot)."""
    pre = entry.kiln.get("preprocessing", {})
    slots = request.app.state.image_decodes
    started = time.monotonic()  # its latency counts its decoding (a decode slot's wait included) too
    try:
        arrays = await decode_images(slots, blobs, pre, image_limits(settings), deadline)
    except asyncio.CancelledError as gone:
        metrics.refused(entry.name, gone, metrics.cut_status or CLIENT_LEFT)  # 503: cut by a stop
        raise
    return await _infer_scores(entry, arrays, backend, metrics, deadline.left(), started)


def image_limits(settings: Settings) -> ImageLimits:
    """One image's pixel limit and one request's budget over all its images (16 images at that limit
    where unset: 4 s of decoding, where 64 were 15 s)."""
    budget = settings.max_request_pixels or 16 * settings.max_image_pixels
    return ImageLimits(max_pixels=settings.max_image_pixels, budget=budget)


def _check_image_input(entry: RepositoryEntry) -> None:
    """A 500 naming the entry's kiln.json where its preprocessing does not fit its images input: the
    server's configuration, which no image a client sends could fix (it was a 400 blaming the image)."""
    name = entry.role("images") or next((t.name for t in entry.config.input), "")
    tensor = next((t for t in entry.config.input if t.name == name), None)
    if tensor is None:
        problems = [f"'roles' names the images input {name!r}, which its config.pbtxt does not declare"]
    else:
        problems = image_input_problems(entry.kiln.get("preprocessing", {}), tensor)
    if problems:
        raise ServingError(
            f"model {entry.name!r} cannot classify images: {entry.path / 'kiln.json'}: {'; '.join(problems)}"
        )


async def _read_images(request: Request, settings: Settings) -> tuple[list[bytes], int, Deadline]:
    """Images and top_k from a JSON body (base64) or a multipart form (``files``, ``top_k``), either
    compressed as KServe v2 infer bodies may be (a plain form is parsed as it arrives), and the
    request's deadline, from its body read (its reading is held to ``--read-timeout-s`` instead)."""
    max_images = settings.max_images
    # media types are case-insensitive (RFC 9110 8.3.1), as Starlette's form parser reads them
    if request.headers.get("content-type", "").lstrip().lower().startswith("multipart/form-data"):
        if request.headers.get("content-encoding") is not None:
            body = await request_body(request, settings.max_body_bytes)
            request = Request(request.scope, _whole(body))  # the form parsed from what it inflated to
        blobs, top_k = await _read_form(request, max_images)
        return blobs, top_k, Deadline.from_now(settings.request_timeout_s)
    raw = await request_body(request, settings.max_body_bytes)
    deadline = Deadline.from_now(settings.request_timeout_s)
    _check_not_raw_image(raw, request.headers.get("content-type", ""))
    offload = request.app.state.json_offload
    blobs, top_k = await offload.call(len(raw), read_json_images, raw, max_images, deadline=deadline)
    return blobs, top_k, deadline


def _check_not_raw_image(raw: bytes, content_type: str) -> None:
    """A 400 saying how to send an image, for a body that is one (``curl --data-binary @cat.png``): it
    was parsed as JSON and refused as "not valid UTF-8", which named no remedy; and for an empty body,
    refused as "not valid JSON: Expecting value: line 1 column 1 (char 0)", which did not say empty."""
    if not raw:
        raise BadRequest(
            'the body is empty (0 bytes); classify takes JSON {"images": [base64 PNG or JPEG, ...]} or a '
            "multipart form of one 'files' part per image (curl -F files=@image.png)"
        )
    if raw.startswith((PNG_SIGNATURE, b"\xff\xd8\xff")) or content_type.lstrip().lower().startswith("image/"):
        raise BadRequest(
            'the body is an image itself; classify takes JSON {"images": [base64 PNG or JPEG, ...]} or a '
            "multipart form of one 'files' part per image (curl -F files=@image.png)"
        )


def _whole(body: bytes) -> Any:
    """An ASGI ``receive`` that hands over ``body`` whole."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _read_form(request: Request, max_images: int) -> tuple[list[bytes], int]:
    """Images and top_k from a multipart form."""
    try:
        form = await request.form(max_files=max_images + 1)
    except StarletteHTTPException as exc:  # Starlette's 400 for the file over max_files
        if "Too many files" not in str(exc.detail):
            raise
        raise PayloadTooLarge(
            f"more than {max_images + 1} images in one request; the limit is {max_images}"
        ) from None
    try:  # its files are spooled (to disk past 1 MB): closed here, answered or refused
        unknown = sorted({key for key in form if key not in FORM_FIELDS})
        if unknown:  # as the JSON body's unknown field: a typo (-F topk=3) is not silently the default
            raise UnprocessableInput(
                f"multipart field(s) {unknown} not taken: classify reads 'files' (one part per image) "
                "and 'top_k'"
            )
        files = form.getlist("files")
        if not files or any(isinstance(f, str) for f in files):
            raise UnprocessableInput("multipart body needs one or more 'files' parts")
        top_k = form.get("top_k", 5)  # form fields are text: digits are the integer
        raw = {"images": ["-"] * len(files), "top_k": int(top_k) if _digits(top_k) else top_k}
        parsed = _validate(raw)
        _check_count(len(files), max_images)
        return [await f.read() for f in files], parsed.top_k
    finally:
        await form.close()


def read_json_images(raw: bytes, max_images: int) -> tuple[list[bytes], int]:
    """The images (decoded from base64) and top_k of a JSON classify body: parsed where it arrived, or
    in the JSON helper process when large (:mod:`serving.protocol.json_offload`)."""
    parsed = _validate(parse_json(raw, "request body"))
    _check_count(len(parsed.images), max_images)
    return [decode_base64(text, index=i) for i, text in enumerate(parsed.images)], parsed.top_k


def _validate(raw: Any) -> ClassifyRequest:
    return validated(ClassifyRequest, raw, "classify request")


def _digits(value: object) -> bool:
    """A form field of digits ``int`` reads (Python refuses over 4 300; no valid top_k has 32)."""
    return isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 32


def _check_count(count: int, limit: int) -> None:
    if count > limit:
        raise PayloadTooLarge(f"{count} images in one request; the limit is {limit}")


def _chunks(images: list[np.ndarray], step: int) -> list[np.ndarray]:
    """The images in order, stacked in runs of one shape of at most ``step``: a model without an
    ``input_size`` takes each image at its own size (stacked whole, two sizes were a 500)."""
    chunks, start = [], 0
    for end in range(1, len(images) + 1):
        if end == len(images) or end - start == step or images[end].shape != images[start].shape:
            chunks.append(np.stack(images[start:end]))  # (n, H, W, C) or (n, C, H, W)
            start = end
    return chunks


async def _infer_scores(
    entry: RepositoryEntry,
    images: list[np.ndarray],
    backend,
    metrics,
    left_s: float | None = None,
    started: float | None = None,
) -> np.ndarray:
    """Per-image class scores (probabilities, or softmax of logits), in chunks of max_batch_size;
    ``left_s``: what the request's deadline leaves the model, after its decoding; ``started``: when its
    decoding began (``time.monotonic()``), where its end-to-end latency counts from: the model's part
    alone (2-8 ms) was observed for requests whose clients waited 0.5-0.9 s for their JPEGs' decoding."""
    input_name = entry.role("images") or entry.config.input[0].name
    output = entry.role("probabilities") or entry.role("logits") or entry.config.output[0].name
    chunks = _chunks(images, entry.max_batch_size if entry.max_batch_size > 0 else 1)
    if entry.max_batch_size <= 0:
        chunks = [c[0] for c in chunks]
    requests = [
        # no timeout_s: that is the client's own (KServe's ``timeout``); the backend applies the server's,
        # shortened to what the request's deadline left it (never its queue timeout)
        InferRequest(entry.name, {input_name: c}, outputs=[output], deadline_s=left_s)
        for c in chunks
    ]
    if len(requests) == 1:
        results = [await observed(metrics, entry.name, backend.infer(requests[0]), started=started)]
    else:  # one client request, one observation, however many max_batch_size chunks it takes
        work = asyncio.gather(*(backend.infer(r) for r in requests))
        results = await observed(metrics, entry.name, work, started=started)
    arrays = [np.asarray(r.outputs[output], dtype=np.float64) for r in results]
    scores = np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrays])  # (images, classes)
    if output != entry.role("probabilities"):
        scores = np.exp(scores - scores.max(axis=1, keepdims=True))
        scores /= scores.sum(axis=1, keepdims=True)
    return scores


def _label(labels: list[str], index: int) -> str:
    """A class's name: its label, or its index where it has none (past the labels, or a blank line);
    asked only for the classes answered (a list of every class's cost ~50 us a request at 1 000)."""
    return labels[index] if index < len(labels) and labels[index] else str(index)
