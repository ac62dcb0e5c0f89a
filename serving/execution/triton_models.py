"""The ``triton`` backend's copy of Triton's model list: each ready model's metadata and config.

The gateway reads metadata and configs synchronously, so they are fetched once Triton answers and
cached; the cache is fetched again when Triton's index of ready models changes (a load, an unload, a
restart with other models), which a lost link or a model the cache lacks makes it check; a model's
own entry is fetched again after Triton refused a request for it (a reload with another config keeps
the index as it was). Until the first fetch succeeds a background task asks again every
``RECONNECT_POLL_S``. The backend itself (:mod:`serving.execution.triton`) answers the gateway's
calls over this cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from serving.errors import ModelNotFound, ServingError
from serving.execution.base import ModelMetadata, TensorMeta
from serving.execution.config_json import config_json
from serving.execution.triton_connection import TritonConnection

log = logging.getLogger("serving.execution.triton")  # the triton backend's log, whichever part writes it
RECONNECT_POLL_S = 0.2  # how often an unreached Triton is asked for its model list again
UNLOADED = "unloaded"  # the reason Triton's index gives a model version it unloaded (no failure)


def askable(name: str) -> bool:
    """Whether Triton can be asked about model ``name``: it reads a name as a C string, up to a NUL,
    so ``resnet18\\0x`` was answered as ``resnet18`` (ready), a name no other route served; no model
    directory holds a NUL, so such a name is none of Triton's models, never asked about."""
    return "\x00" not in name


class TritonModels(TritonConnection):
    """The models of the Triton at ``url`` as its index lists them: the ready ones' metadata and configs
    (refetched at most once per ``resync_interval_s``, and at once after a lost link), and why each
    other one is not served."""

    def __init__(
        self,
        url: str,
        protocol: str,
        *,
        retry_after_s: float,
        probe_timeout_s: float,
        resync_interval_s: float,
    ) -> None:
        super().__init__(url, protocol, retry_after_s=retry_after_s, probe_timeout_s=probe_timeout_s)
        self.resync_interval_s = resync_interval_s
        self._models: dict[str, tuple[ModelMetadata, dict[str, Any]]] = {}
        self._ready_versions: dict[
            str, frozenset[str]
        ] = {}  # of each cached model, as Triton's index had them
        self._unready: dict[str, str] = {}  # models Triton lists without a ready version: why
        self._failed: set[str] = set()  # those of them whose load failed (not never loaded, unloaded)
        self._stale: set[str] = set()  # cached models the next sync fetches again (:meth:`_recheck`)
        self._synced = False
        self._last_sync = float("-inf")
        self._sync_lock = asyncio.Lock()
        self._watcher: asyncio.Task | None = None
        self._refresh: asyncio.Task | None = None
        self._running = False  # between start and stop: only then may a watcher run

    async def _sync(self, *, force: bool = False, now: bool = False) -> None:
        """Fetch the ready models' metadata and configs. Forced (at start, after a lost link): every
        model's, unless a sync finished while this one waited for the lock (a lost link wakes the
        watcher, probes and requests at once). Else at most once per ``resync_interval_s`` (``now``: at
        once, Triton having said a model the list lacks is ready), and only for the models whose ready
        versions changed in Triton's index (one call when none did)."""
        asked = time.monotonic()
        async with self._sync_lock:
            if (force or now) and self._synced and self._last_sync >= asked:
                return
            if not (force or now) and time.monotonic() - self._last_sync < self.resync_interval_s:
                return
            self._last_sync = time.monotonic()
            ready, unready, failed = await self._index()
            stale, self._stale = self._stale, set()
            kept = {} if force or not self._synced else self._models
            models: dict[str, tuple[ModelMetadata, dict[str, Any]]] = {}
            for name, versions in sorted(ready.items()):
                if name in kept and name not in stale and self._ready_versions.get(name) == versions:
                    models[name] = kept[name]
                    continue
                try:
                    models[name] = (await self._fetch_metadata(name), await self._fetch_config(name))
                except ModelNotFound as error:  # unloaded since the index: that model, not the list
                    unready[name] = error.message
                    failed.discard(name)
                except ServingError:  # Triton went away meanwhile: the next sync fetches them again
                    self._stale |= stale
                    raise
            changed = set(models) != set(self._models) or any(models[n] is not kept.get(n) for n in models)
            self._ready_versions = {name: ready[name] for name in models}  # a failed fetch is tried again
            self._models, self._unready, self._synced = models, unready, True
            self._failed = failed & set(unready)
            if changed:
                log.info("Triton at %s serves %s", self.url, sorted(models))

    async def _index(self) -> tuple[dict[str, frozenset[str]], dict[str, str], set[str]]:
        """Triton's repository index: each model's READY versions, why each model listed without a
        ready version is not served (a failed load's reason; an entry without a state is a model
        Triton never loaded, as in ``--model-control-mode explicit``), and which of those failed to
        load: ``UNAVAILABLE`` for another reason than ``unloaded`` (a model never loaded, loading,
        unloading or unloaded is no failure, which the readiness answer named as one)."""
        index = await self._call("get_model_repository_index")
        if self.protocol == "grpc":
            index = json_format.MessageToDict(index, preserving_proto_field_name=True).get("models", [])
        ready: dict[str, frozenset[str]] = {}
        for m in index:
            if m.get("state") == "READY":
                ready[m["name"]] = ready.get(m["name"], frozenset()) | {m.get("version", "")}
        unready = {
            m["name"]: f"{m.get('state') or 'not loaded'}{': ' + m['reason'] if m.get('reason') else ''}"
            for m in index
            if m["name"] not in ready
        }
        failed = {
            m["name"]
            for m in index
            if m["name"] not in ready and m.get("state") == "UNAVAILABLE" and m.get("reason") != UNLOADED
        }
        return ready, unready, failed

    async def _fetch_metadata(self, name: str) -> ModelMetadata:
        meta = await self._call("get_model_metadata", name)
        if self.protocol == "grpc":
            meta = json_format.MessageToDict(meta, preserving_proto_field_name=True)

        def tensors(key: str) -> list[TensorMeta]:
            return [
                TensorMeta(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta.get(key, [])
            ]

        return ModelMetadata(
            meta["name"],
            list(meta.get("versions", [])),
            meta.get("platform", ""),
            tensors("inputs"),
            tensors("outputs"),
        )

    async def _fetch_config(self, name: str) -> dict[str, Any]:
        """The config as Triton's HTTP endpoint shows it (proto field names: ``max_batch_size``), whatever
        the protocol, as the embedded backend's. camelCase keys served at ``/v2/models/{name}/config``
        made perf_analyzer over HTTP read no ``max_batch_size`` and take the batch axis for a dynamic
        dimension ("input images contains dynamic shape")."""
        reply = await self._call("get_model_config", name)
        if self.protocol == "grpc":
            return config_json(reply.config)
        proto = json_format.ParseDict(reply, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)
        return config_json(proto)

    def _cached(self, name: str, version: str) -> tuple[ModelMetadata, dict[str, Any]]:
        if name not in self._models:
            if not self._synced:
                raise self._unavailable("its model list has not been fetched yet")
            self._refresh_soon()  # Triton may have loaded it since: the next request finds it
            if name in self._unready:
                raise ModelNotFound(f"model {name!r} is not available on Triton: {self._unready[name]}")
            raise ModelNotFound(f"unknown model {name!r}; Triton serves {sorted(self._models)}")
        meta, config = self._models[name]
        if version and meta.versions and version not in meta.versions:
            raise ModelNotFound(f"model {name!r} has no version {version!r}; available: {meta.versions}")
        return meta, config

    def _on_link_lost(self) -> None:
        """A lost link may mean a Triton restarted with other models (or versions): the list is fetched
        again as soon as Triton answers, as at start. A restart no call saw is caught by the index
        check of readiness probes and of requests for models the list lacks (:meth:`_sync`)."""
        self._synced = False
        self._watch()

    def _recheck(self, name: str) -> None:
        """Fetch ``name``'s metadata and config again soon: Triton refused a request for it (a 400), and a
        model reloaded with another config (input shape, ``max_batch_size``) keeps its ready versions,
        so the index never told; its old metadata stood for good, and clients shaping requests by it
        got refused by Triton with the shape the gateway's own metadata contradicted."""
        self._stale.add(name)
        self._refresh_soon()

    def _refresh_soon(self) -> None:
        """Check Triton's index in the background (the metadata routes cannot wait for it)."""
        if not self._running or (self._refresh is not None and not self._refresh.done()):
            return
        try:
            self._refresh = asyncio.get_running_loop().create_task(self._sync_due())
        except RuntimeError:  # no loop in this thread: the next request on the loop asks
            return
        self._refresh.add_done_callback(_quiet)

    async def _sync_due(self) -> None:
        """:meth:`_sync`, waiting out ``resync_interval_s`` when a model is to be fetched again (else a
        sync that ran just before left it stale until some later probe or request asked)."""
        if self._stale:
            await asyncio.sleep(max(0.0, self._last_sync + self.resync_interval_s - time.monotonic()))
        await self._sync()

    def _watch(self) -> None:
        if self._running and (self._watcher is None or self._watcher.done()):
            self._watcher = asyncio.get_running_loop().create_task(self._sync_until_reached())

    async def _sync_until_reached(self) -> None:
        while not self._synced and self._running:
            await asyncio.sleep(RECONNECT_POLL_S)
            try:
                await self._sync(force=True)
            except ServingError as error:
                log.debug("Triton still unreachable: %s", error.message)

    async def _ensure_known(self, name: str) -> None:
        """Refresh the model list when a name is unknown (Triton may have come back or changed): at once
        when Triton answers that model ready (a client that just loaded it got a 404 naming it "not
        loaded" until the next index check, up to ``resync_interval_s`` later)."""
        if name in self._models:
            return
        if not self._synced:
            await self._sync(force=True)
        else:
            await self._sync(now=askable(name) and bool(await self._call("is_model_ready", name)))


def _quiet(task: asyncio.Task) -> None:
    """A background refresh that failed (Triton unreachable) is told by the next request, not logged."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("refreshing Triton's model list failed: %s", task.exception())
