"""Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from serving.protocol.deps import MetricsDep

router = APIRouter(tags=["metrics"])


class PrometheusResponse(Response):
    """The Prometheus text exposition format (documented under its own content type)."""

    media_type = CONTENT_TYPE_LATEST


@router.get("/metrics", summary="Prometheus metrics", response_class=PrometheusResponse)
async def metrics(metrics: MetricsDep) -> PrometheusResponse:
    return PrometheusResponse(metrics.render())
