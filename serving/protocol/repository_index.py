"""Triton's repository index (``POST /v2/repository/index``, gRPC ``RepositoryIndex``): every model the
gateway serves, each version with its state, as Triton lists its repository. Tools that read a
server's models from it (``tritonclient``'s ``get_model_repository_index``, the ``triton`` backend
itself) work against the gateway as against Triton.

Only the index: the gateway serves the repository it started with, so the extension's load and
unload stay unserved (``model_repository`` is not among the server metadata's extensions). The states
it lists also decide what the metadata and config routes answer for a model whose load failed
(:func:`loaded_metadata`).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from serving.errors import ModelNotFound, ServingError, Unavailable
from serving.execution.base import Backend, ModelMetadata

READY_PROBES = 16  # model versions asked whether ready at once (a translator's asks two entries more)


async def repository_index(backend: Backend, ready_only: bool = False) -> list[dict[str, Any]]:
    """One entry a version of every model: ``name``, ``version``, ``state`` (``READY``, or
    ``UNAVAILABLE`` with the ``reason`` where the model does not answer ready: its load error where
    there was one, as Triton gives it); ``ready_only`` keeps the ready ones (Triton's ``ready`` flag).

    The versions are asked whether ready together (at most ``READY_PROBES`` at once): one after
    another, a hung Triton made an index of N models wait N probe timeouts."""
    listed: list[dict[str, Any] | tuple[str, str]] = []  # an entry, or a version to ask about
    for name in sorted(backend.list_models()):
        try:
            versions = backend.metadata(name).versions or [""]
        except ServingError as error:  # listed, yet not described now (a backend that lost it)
            listed.append(_unavailable(name, "", error.message))
            continue
        listed.extend((name, version) for version in versions)
    asked = [item for item in listed if isinstance(item, tuple)]
    ready = dict(zip(asked, await ready_together(backend, asked), strict=True))
    index = [item if isinstance(item, dict) else _state(backend, *item, ready[item]) for item in listed]
    return [entry for entry in index if entry["state"] == "READY" or not ready_only]


async def ready_together(backend: Backend, models: list[tuple[str, str]]) -> list[bool]:
    """Whether each ``(name, version)`` is ready, asked together (at most ``READY_PROBES`` at once):
    one after another, a hung Triton made a listing of N models wait N probe timeouts."""
    probes = asyncio.Semaphore(READY_PROBES)

    async def ready(name: str, version: str) -> bool:
        async with probes:
            try:
                return await backend.model_ready(name, version)
            except ModelNotFound:  # an entry of the gateway's repository that a Triton behind lacks
                return False

    return list(await asyncio.gather(*(ready(name, version) for name, version in models)))


def _state(backend: Backend, name: str, version: str, ready: bool) -> dict[str, Any]:
    if ready:
        return {"name": name, "version": version, "state": "READY", "reason": ""}
    why = getattr(backend, "index_reason", backend.load_error)(name)  # the gateway's: a dead translator's
    return _unavailable(name, version, why or "not ready")


def _unavailable(name: str, version: str, reason: str) -> dict[str, Any]:
    """A model (version) not served. Without a version (it failed before any version loaded: its config
    refused, no version directory its policy selects) the entry has no ``version``, as Triton 2.51
    writes one for a model-level failure (``version`` only where >= 0); ``"version": ""`` was no
    version a client could ask for. The gRPC index shows it as Triton's does: the field left empty."""
    entry = {"name": name, "version": version, "state": "UNAVAILABLE", "reason": reason}
    if not version:
        del entry["version"]
    return entry


async def known_metadata(backend: Backend, name: str, version: str = "") -> ModelMetadata:
    """``backend.metadata``, asking the backend once whether a model its list lacks is ready: the
    ``triton`` backend fetches a model Triton loaded since it read the index (its ``model_ready``), so
    the request that follows a client's load is served. Every route read the list alone and answered
    404 "not loaded" until the next index check. Its 404 stands where the answer is no (or none)."""
    try:
        return backend.metadata(name, version)
    except ModelNotFound as missing:
        try:
            ready = await backend.model_ready(name, version)
        except ServingError:
            ready = False
        if not ready:
            raise missing from None
    return backend.metadata(name, version)


async def loaded_metadata(backend: Backend, name: str, version: str = "") -> ModelMetadata:
    """``backend.metadata``, refused as Triton refuses the metadata and config of a model whose load
    failed (a 200 described a model no request can reach): without a version, 404 when no version
    of it loaded ("has no available versions"); for a version that did not load, 503. A version's
    metadata lists that version alone, as Triton's does (not every version of the model)."""
    meta = await known_metadata(backend, name, version)  # an unknown model or version: its 404
    shown = replace(meta, versions=[version]) if version else meta
    error = backend.load_error(name)
    if not error:
        return shown
    for wanted in [version] if version else meta.versions:
        if await backend.model_ready(name, wanted):
            return shown
    if version:
        raise Unavailable(f"model {name!r} version {version} is not ready: it failed to load: {error}")
    raise ModelNotFound(f"model {name!r} has no available versions: it failed to load: {error}")
