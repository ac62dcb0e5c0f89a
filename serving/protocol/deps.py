"""``Annotated`` dependencies: what routers need, read from ``app.state`` (tests override them)."""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from serving.errors import UnprocessableInput
from serving.execution.base import Backend
from serving.execution.repository import Repository, parse_version
from serving.metrics import GatewayMetrics
from serving.settings import Settings

ModelT = TypeVar("ModelT", bound=BaseModel)


def get_backend(request: Request) -> Backend:
    return request.app.state.backend


def get_metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_repository(request: Request) -> Repository:
    return request.app.state.repository


def get_version(request: Request) -> str:
    """The ``{version}`` path segment of a versioned route ("" on the others); not digits is a 400."""
    return parse_version(request.path_params.get("version", ""))


BackendDep = Annotated[Backend, Depends(get_backend)]
VersionDep = Annotated[str, Depends(get_version)]
MetricsDep = Annotated[GatewayMetrics, Depends(get_metrics)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RepositoryDep = Annotated[Repository, Depends(get_repository)]


def validated(model: type[ModelT], raw: object, what: str) -> ModelT:
    """Validate a JSON body; schema violations are a 422 naming every offending field."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise UnprocessableInput(f"invalid {what}: {problems}") from None
