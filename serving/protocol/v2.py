"""KServe v2 / Open Inference Protocol over HTTP, as Triton serves it (tritonclient.http works unchanged)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Request, Response

from serving.errors import BadRequest, NotServed, ServingError
from serving.execution.model_versions import parse_version
from serving.metrics import CLIENT_LEFT, COUNTED, count_cut, observed_infer
from serving.protocol.deps import BackendDep, MetricsDep, SettingsDep, VersionDep
from serving.protocol.limits import request_body
from serving.protocol.repository_index import known_metadata, loaded_metadata, repository_index
from serving.protocol.responses import (
    OVERLOAD,
    VERSION_PARAMETER,
    VERSIONED,
    empty,
    error_response,
    errors,
)
from serving.protocol.statistics import model_statistics
from serving.protocol.translate import until_client_leaves
from serving.protocol.v2_codec import (
    EXTENSIONS,
    HEADER_LENGTH,
    NOT_SERVED,
    SERVER_NAME,
    server_version,
)
from serving.protocol.v2_openapi import INFER_BODY, INFER_RESPONSE

router = APIRouter(prefix="/v2", tags=["kserve-v2"])
T = TypeVar("T")


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": server_version(), "extensions": EXTENSIONS}


LOOKUP_ERRORS = errors(400, 404)  # a version that is not digits; an unknown model or version


INDEX_BODY = {  # optional, as Triton reads it: ``ready`` a JSON boolean (Triton refuses anything else)
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": {"ready": {"type": "boolean", "default": False}}}
            }
        },
    }
}


@router.post(
    "/repository/index",
    summary="Every model and version with its state (Triton's repository index)",
    responses=errors(400, 413, 503),  # a body past the limit; the request bodies held past the budget
    openapi_extra=INDEX_BODY,
)
async def model_repository_index(request: Request, backend: BackendDep) -> list[dict[str, Any]]:
    body = await request.body()
    try:
        ready = json.loads(body).get("ready", False) if body.strip() else False
    except (ValueError, AttributeError):
        raise BadRequest(
            'the repository index takes an empty body or a JSON object such as {"ready": true}'
        ) from None
    if not isinstance(ready, bool):  # "false" was read as true: every ready model, not every model
        raise BadRequest(f"the repository index's 'ready' must be true or false, got {repr(ready)[:40]}")
    return await repository_index(backend, ready)


SHOWN_PATH_CHARS = 200  # of a refused path echoed in its answer (and its log line): enough to know it


def shown_path(path: str) -> str:
    """A request's decoded ``path`` percent-encoded again (as the access log shows it), its first
    ``SHOWN_PATH_CHARS`` kept: one printable line. ``request.url.path`` silently dropped a CR, LF or
    tab the client sent (``urlsplit`` strips them) and kept NUL and terminal escapes, raw in the error
    line the gateway logs for a 501."""
    quoted = quote(path, safe="/:@!$&'()*+,;=~")
    if len(quoted) <= SHOWN_PATH_CHARS:
        return quoted
    cut = quoted[:SHOWN_PATH_CHARS]
    return (cut[: cut.rindex("%")] if "%" in cut[-2:] else cut) + "..."  # no escape cut in two


def _not_served(path: str, reason: str) -> None:
    """Triton's routes of an extension the gateway does not serve: 501 with what to do instead."""

    async def refuse(request: Request) -> None:
        raise NotServed(f"{shown_path(request.scope['path'])}: {NOT_SERVED[reason]}")

    router.add_api_route(path, refuse, methods=["GET", "POST"], include_in_schema=False)


for _kind in ("systemsharedmemory", "cudasharedmemory"):
    _not_served(f"/{_kind}/{{rest:path}}", "shared_memory")
_not_served("/repository/models/{name}/{action}", "model_load")
_not_served("/trace/setting", "trace")
_not_served("/models/{name}/trace/setting", "trace")
_not_served("/logging", "logging")


# through --backend triton the statistics carry Triton's half: unreachable, or too slow, it is a 503 / 504
STATS_ERRORS = errors(503, 504)


@router.get(
    "/models/stats",
    summary="Statistics of every model (Triton's statistics extension)",
    responses=STATS_ERRORS,
)
async def every_model_statistics(backend: BackendDep, metrics: MetricsDep) -> dict[str, Any]:
    return {
        "model_stats": await model_statistics(backend, metrics)
    }  # before /models/{name}: "stats" is no model


def _model_get(path: str, summary: str, versioned_summary: str, **route: Any) -> Callable[[T], T]:
    """GET ``/models/{name}<path>`` and ``/models/{name}/versions/{version}<path>`` on one handler (the
    versioned one registered first, as stacked decorators did)."""

    def register(handler: T) -> T:
        router.get(
            f"/models/{{name}}/versions/{{version}}{path}",
            summary=versioned_summary,
            openapi_extra=VERSIONED,
            **route,
        )(handler)
        return router.get(f"/models/{{name}}{path}", summary=summary, **route)(handler)

    return register


@_model_get(
    "/stats",
    "Statistics of a model",
    "Statistics of a model's version",
    responses={**LOOKUP_ERRORS, **STATS_ERRORS},
)
async def statistics(
    name: str, backend: BackendDep, metrics: MetricsDep, version: VersionDep
) -> dict[str, Any]:
    return {"model_stats": await model_statistics(backend, metrics, name, version)}


# a model whose load failed: 404 (none of its versions loaded), 503 (the version asked for did not)
DESCRIBE_ERRORS = errors(400, 404, 503)


@_model_get("", "Model metadata", "Model metadata of one version", responses=DESCRIBE_ERRORS)
async def model_metadata(name: str, backend: BackendDep, version: VersionDep) -> dict[str, Any]:
    meta = await loaded_metadata(backend, name, version)
    tensors = lambda metas: [{"name": m.name, "datatype": m.datatype, "shape": m.shape} for m in metas]  # noqa: E731
    return {
        "name": meta.name,
        "versions": meta.versions,
        "platform": meta.platform,
        "inputs": tensors(meta.inputs),
        "outputs": tensors(meta.outputs),
    }


READY = {200: empty("ready"), **errors(400, 404)}  # 400: not ready, or a version that is not digits


@_model_get("/ready", "Model readiness", "Model version readiness", response_class=Response, responses=READY)
async def model_ready(name: str, backend: BackendDep, version: VersionDep) -> Response:
    if await backend.model_ready(name, version):
        return Response(status_code=200)
    listed = _versions(backend, name)
    if version and listed and version not in listed:  # not another version's load error
        return error_response(_unlisted(backend, name, version, listed), 400)
    failed = getattr(backend, "unready_reason", backend.load_error)(name)  # Triton's "not loaded" too
    where = f" in version {version}" if version else ""
    return error_response(f"model {name!r} is not ready{where}" + (f": {failed}" if failed else ""), 400)


def _unlisted(backend: Any, name: str, version: str, listed: list[str]) -> str:
    """Why ``version`` of ``name`` is none of the versions it serves, as its metadata route says it: a
    version on disk that the version_policy leaves out (a rolled-back one) is named as such, not absent."""
    try:
        backend.metadata(name, version)
    except ServingError as error:
        return error.message
    return f"model {name!r} has no version {version}; its versions: {listed}"


def _versions(backend: Any, name: str) -> list[str]:
    """The versions ``name`` serves under its policy ([] where it is not described): a version outside
    them was told the load error of another version of the model."""
    try:
        return list(backend.metadata(name).versions)
    except ServingError:
        return []


@_model_get(
    "/config",
    "Model configuration (config.pbtxt as JSON)",
    "Model configuration of one version",
    responses=DESCRIBE_ERRORS,
)
async def model_config(name: str, backend: BackendDep, version: VersionDep) -> dict[str, Any]:
    await loaded_metadata(backend, name, version)  # as Triton: no config of a model that never loaded
    return backend.config(name, version)


INFER_ERRORS = errors(400, 404, 413, 415, 422, *OVERLOAD)


@router.post(
    "/models/{name}/infer",
    summary="Inference (JSON or binary tensor data extension)",
    responses={**INFER_RESPONSE, **INFER_ERRORS},
    openapi_extra=INFER_BODY,
)
@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference on one version",
    responses={**INFER_RESPONSE, **INFER_ERRORS},
    openapi_extra={**INFER_BODY, "parameters": [*INFER_BODY["parameters"], VERSION_PARAMETER]},
)
async def infer(
    name: str,
    request: Request,
    backend: BackendDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    version: VersionDep,
) -> Response:
    await known_metadata(backend, name, version)  # unknown model -> 404 before any work or metric label
    try:  # the body gzip/deflate inflated, held in the budget
        body = await request_body(request, settings.max_body_bytes)
        parsed = await request.app.state.json_offload.parse_infer(  # a large JSON part held to the deadline
            body, request.headers.get(HEADER_LENGTH), name, version, settings.request_timeout_s
        )
    except asyncio.CancelledError as cut:  # before its model: a stop's cut (its 503) or its client gone
        count_cut(metrics, name, cut, version)
        raise
    result = await until_client_leaves(request, observed_infer(backend, metrics, parsed.request))
    if result is None:  # its client left (a translation's rows left the decode batch): nobody to answer
        return Response(status_code=CLIENT_LEFT)
    try:
        content, header_length = await request.app.state.json_offload.encode_infer(result, parsed)
    except asyncio.CancelledError as cut:  # its client left as a large answer was written: counted a
        setattr(cut, COUNTED, True)  # success already (observed), not a 499 on top (serving.protocol.http1)
        raise
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)}
    )


async def lean_infer(request: Request, name: str, version: str = "") -> Response:
    """:func:`infer` for :mod:`serving.protocol.lean`: its dependencies read here, as they read them."""
    state = request.app.state
    return await infer(name, request, state.backend, state.metrics, state.settings, parse_version(version))
