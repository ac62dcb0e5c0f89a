"""Prometheus scrape endpoint."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from serving.protocol.deps import MetricsDep

router = APIRouter(tags=["metrics"])


class PrometheusResponse(Response):
    """The Prometheus text exposition format (documented under its own content type)."""

    media_type = CONTENT_TYPE_LATEST


@router.get("/metrics", summary="Prometheus metrics", response_class=PrometheusResponse)
async def metrics(metrics: MetricsDep) -> PrometheusResponse:
    # off the event loop: a page reads the gateway's process tree from procfs (14 ms for two workers
    # holding a 44M-parameter translator, the kernel walking their mappings) and, with several
    # workers, merges every worker's files; requests in flight go on meanwhile
    return PrometheusResponse(await asyncio.to_thread(metrics.render))
