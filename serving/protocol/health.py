"""KServe v2 health: liveness and readiness (200 with an empty body as Triton answers, else a JSON 400)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from serving.execution.base import Backend
from serving.protocol.deps import BackendDep
from serving.protocol.responses import empty, error_response, errors

router = APIRouter(tags=["health"])


def _not(state: str) -> dict[int | str, dict]:
    """The probe's 400: the server is not ``state`` (errors(400) describes malformed input)."""
    return {400: {**errors(400)[400], "description": f"the server is not {state}"}}


@router.get(
    "/v2/health/live",
    summary="Server liveness",
    response_class=Response,
    responses={200: empty("live"), **_not("live")},
)
async def live(backend: BackendDep) -> Response:
    return Response(status_code=200) if backend.is_live() else error_response("server is not live", 400)


@router.get(
    "/v2/health/ready",
    summary="Server readiness (every model loaded)",
    response_class=Response,
    responses={200: empty("ready"), **_not("ready")},
)
async def ready(backend: BackendDep) -> Response:
    if await backend.is_ready():
        return Response(status_code=200)
    return error_response(not_ready_reason(backend), 400)


SHOWN_FAILURES = 3  # the failed models a not-ready answer names (the repository index lists them all)
REASON_CHARS = 300  # of each one's load error


def not_ready_reason(backend: Backend) -> str:
    """The not-ready answer's words: the models that failed to load, with their errors, where some did
    (a repository of 100 models with one broken said only "server is not ready", and an operator went
    through the log or the repository index to find which); else the plain words (still loading, a
    drain, a translator without decode workers, a Triton not ready)."""
    outage = getattr(backend, "outage", "")  # --backend triton, unreachable: its model index is stale
    if outage:
        return f"server is not ready: {outage}"
    failed = [(name, error) for name in backend.list_models() if (error := backend.load_error(name))]
    stalled = getattr(backend, "decode_outage", "")  # a translator whose decode workers died
    if not failed:
        return f"server is not ready: {stalled}" if stalled else "server is not ready"
    shown = "; ".join(
        f"model {name!r} failed to load: {error[:REASON_CHARS]}" for name, error in failed[:SHOWN_FAILURES]
    )
    more = (
        f"; and {len(failed) - SHOWN_FAILURES} more (POST /v2/repository/index)"
        if len(failed) > SHOWN_FAILURES
        else ""
    )
    return f"server is not ready: {shown}{more}" + (f"; {stalled}" if stalled else "")
