"""KServe v2 health: liveness and readiness (200 with an empty body as Triton answers, else a JSON 400)."""

from __future__ import annotations

from fastapi import APIRouter, Response

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
    return error_response("server is not ready", 400)
