"""KServe v2 health: liveness and readiness (200 or 400 with an empty body, as Triton answers)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from serving.protocol.deps import BackendDep

router = APIRouter(tags=["health"])


@router.get("/v2/health/live", summary="Server liveness")
async def live(backend: BackendDep) -> Response:
    return Response(status_code=200 if backend.is_live() else 400)


@router.get("/v2/health/ready", summary="Server readiness (every model loaded)")
async def ready(backend: BackendDep) -> Response:
    return Response(status_code=200 if await backend.is_ready() else 400)
