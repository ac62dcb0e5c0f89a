"""``Annotated`` dependencies: what routers need, read from ``app.state`` (tests override them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from serving.errors import UnprocessableInput
from serving.execution.base import Backend
from serving.execution.model_versions import parse_version
from serving.execution.repository import Repository
from serving.metrics import GatewayMetrics
from serving.settings import Settings

ModelT = TypeVar("ModelT", bound=BaseModel)
T = TypeVar("T")


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


def _on_the_loop(read: Callable[[Request], T]) -> Callable[[Request], Awaitable[T]]:
    """``read`` as an ``async`` dependency. FastAPI runs a plain ``def`` dependency on a worker thread,
    a thread hop per dependency and request (four on an infer request); these only read ``app.state``
    or the path, so they run on the event loop."""

    async def dependency(request: Request) -> T:
        return read(request)

    dependency.__name__ = read.__name__
    return dependency


BackendDep = Annotated[Backend, Depends(_on_the_loop(get_backend))]
VersionDep = Annotated[str, Depends(_on_the_loop(get_version))]
MetricsDep = Annotated[GatewayMetrics, Depends(_on_the_loop(get_metrics))]
SettingsDep = Annotated[Settings, Depends(_on_the_loop(get_settings))]
RepositoryDep = Annotated[Repository, Depends(_on_the_loop(get_repository))]


def validated(model: type[ModelT], raw: object, what: str) -> ModelT:
    """Validate a JSON body; schema violations are a 422 naming every offending field."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise UnprocessableInput(f"invalid {what}: {problems}") from None
