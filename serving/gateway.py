"""The one object every front end calls: a backend, plus the translator pool built over its runners.

Execution (a backend) knows models and runners, decoding (the pool) knows translators; this is the only
place the two meet, so routers and the gRPC servicer ask the gateway and never reach into a backend
for a translator. It satisfies :class:`serving.execution.base.Backend`, so front ends see one interface.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from serving.decoding.scheduler_config import SchedulerConfig
from serving.decoding.translator import (
    Translator,
    check_backend_infer,
    entry_max_positions,
    entry_source_tokenizer,
)
from serving.decoding.translator_pool import TranslatorPool, cannot_translate, step_entries
from serving.errors import ModelNotFound, Unavailable
from serving.execution.base import Backend, InferRequest, InferResponse, LoadingStopped, ModelMetadata

log = logging.getLogger(__name__)


class Gateway:
    """Route each request to the translator pool (``task == "translate"`` entries) or to the backend."""

    def __init__(
        self,
        backend: Backend,
        repository: Any,
        *,
        scheduler_config: SchedulerConfig | None = None,
        observer: Any = None,
        retry_after_s: float = 1.0,
        shutdown_grace_s: float = 30.0,
    ) -> None:
        self.backend, self.repository = backend, repository
        self.retry_after_s, self.shutdown_grace_s = retry_after_s, shutdown_grace_s
        # Backends whose translate entries are served elsewhere (Triton's own <name> model) say so.
        self.translators = (
            TranslatorPool(repository, scheduler_config=scheduler_config, observer=observer)
            if repository is not None and getattr(backend, "runs_translators_in_gateway", False)
            else None
        )
        # Read once: the infer hot path asks this for every request (the repository never changes).
        self._translate_names = (
            frozenset(self.translators.names()) if self.translators is not None else frozenset()
        )
        self._stopping = False

    async def start(self) -> None:
        await self.backend.start()
        if self.translators is not None:
            if self._stopping:  # a stop signal while the backend loaded
                raise LoadingStopped("a stop signal arrived while the models loaded; translators not started")
            await self.translators.start(self.backend.runner)  # type: ignore[attr-defined]
            # the backend's start-up line lists the encoder and decoder entries, not these names: the
            # models a translate request names were missing from the log (a failed one logged its error)
            if self.translators.translators:  # with their decode workers, which depend on the placement
                served = sorted(self.translators.translators.items())
                log.info(
                    "translators serving %s", ", ".join(f"{n} ({_decode_workers(t)})" for n, t in served)
                )

    def stop_loading(self) -> None:
        """A stop signal while :meth:`start` loads: the backend stops once the models it is loading are
        loaded (it loads several at once)."""
        self._stopping = True
        stop_loading = getattr(self.backend, "stop_loading", None)
        if stop_loading is not None:
            stop_loading()

    async def stop(self) -> None:
        """Finish the translations in flight first (they call the backend), then the backend. Each step
        runs whatever the one before did (a translator that failed to stop left the backend's sessions
        and Triton connections open); the first failure is raised once all ran, a later one logged."""
        self._stopping = True
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [("the backend", self.backend.stop)]
        if self.translators is not None:
            pool = self.translators
            steps.insert(0, ("the translators", lambda: pool.stop(self.shutdown_grace_s)))
        first: Exception | None = None
        for what, step in steps:
            try:
                await step()
            except Exception as exc:  # noqa: BLE001 - the next steps must still run
                if first is None:  # raised below: its traceback is the caller's to log
                    log.error("gateway stop: stopping %s failed (%s); stopping the rest", what, exc)
                    first = exc
                else:
                    log.error("gateway stop: stopping %s failed too", what, exc_info=exc)
        if first is not None:
            raise first

    # -- translation --------------------------------------------------------------------------------

    def _translates(self, name: str) -> bool:
        return name in self._translate_names

    def translator(self, name: str) -> Translator | None:
        """The gateway's translator of ``name``, or None when the backend translates it itself (infer)."""
        if self.translators is None:
            return None
        entry = self.repository.get(name)  # 404 for unknown names
        if entry.task != "translate":
            raise cannot_translate(entry, self.repository.entries)
        translator = self.translators.get(name)
        if translator is None or self._stopping:
            reason = self.translators.failed.get(name, "the gateway is starting or stopping")
            raise Unavailable(f"translator {name!r} is not ready: {reason}", retry_after=self.retry_after_s)
        return translator

    # -- Backend protocol ---------------------------------------------------------------------------

    def list_models(self) -> list[str]:
        return self.backend.list_models()

    def is_live(self) -> bool:
        """Live while the backend is and no translator has lost every decode worker for good (each
        died more often than its restarts allow, :meth:`Translator.gone`): such a translator is not
        ready until the gateway restarts, and a liveness probe (the Deployment's) is what restarts it;
        live, the pod stayed unready for good. Workers that are restarting leave it live."""
        return self.backend.is_live() and not self._stopped(for_good=True)

    async def is_ready(self) -> bool:
        if self._stopping:
            return False
        # the backend is asked whatever the translators' state: its probe records or clears a Triton
        # outage, the answer's first reason (one a model's probe recorded named a Triton back since,
        # instead of the dead translator, for as long as that translator was not ready)
        ready = await self.backend.is_ready()
        failed = self.translators.failed if self.translators is not None else {}
        return ready and not failed and not self._stopped()

    def _stopped(self, for_good: bool = False) -> bool:
        """Whether a translator has no decode worker that can decode now (:meth:`Translator.stopped`),
        or, ``for_good``, none that serves or restarts (:meth:`Translator.gone`)."""
        pool = self.translators.translators if self.translators is not None else {}
        return any((t.gone() if for_good else t.stopped()) for t in pool.values())

    async def model_ready(self, name: str, version: str = "") -> bool:
        """A translator is ready when it runs and the backend serves its encoder and decoder entries
        (with Triton behind, they live there: a Triton down or hung is a translator that cannot
        answer, which a 200 told load balancers otherwise)."""
        if self._translates(name):
            entry = self.repository.get(name)
            try:
                entry.resolve_version(version)
            except ModelNotFound:
                return False
            translator = self.translators.get(name)  # type: ignore[union-attr]
            if self._stopping or translator is None or translator.stopped():
                return False
            steps = await asyncio.gather(
                *(self.backend.model_ready(step) for step in step_entries(entry)), return_exceptions=True
            )
            return all(ready is True for ready in steps)  # a probe that failed: not ready, not a 500
        return await self.backend.model_ready(name, version)

    def latest_version(self, name: str) -> str:
        """The version a call for ``name`` without a version reaches: a translator's newest, a backend's
        as it resolves it (the newest that loaded), else the newest its metadata lists."""
        latest = getattr(self.backend, "latest_version", None)
        if self._translates(name) or latest is None:
            versions = self.metadata(name).versions
            return versions[-1] if versions else ""
        return latest(name)

    def load_error(self, name: str) -> str:
        if self._translates(name):
            return self.translators.failed.get(name, "")  # type: ignore[union-attr]
        return self.backend.load_error(name)

    def unready_reason(self, name: str) -> str:
        """Why model ``name`` is not served: its load error, or where it has none the backend's word
        (``--backend triton``: "not loaded", a model Triton lists but never loaded); "" if none."""
        reason = self.load_error(name)
        if reason or not self._translates(name):
            return reason or getattr(self.backend, "unready_reason", lambda _: "")(name)
        translator = self.translators.translators.get(name)  # type: ignore[union-attr]
        stopped = translator.stopped() if translator is not None else ""
        return stopped or getattr(self.backend, "outage", "") or self._step_reason(name)

    def _step_reason(self, name: str) -> str:
        """Why the backend does not serve translator ``name``'s encoder or decoder entry ("" where it
        serves both): with Triton behind, one unloaded there (``--model-control-mode explicit``) or
        that failed to load left the translator's readiness "not ready" with no reason."""
        reason = getattr(self.backend, "unready_reason", None)
        if reason is None:
            return ""
        try:
            steps = step_entries(self.repository.get(name))
        except (KeyError, ValueError, ModelNotFound):
            return ""
        return "; ".join(
            f"its {kind} entry {step!r}: {why}"
            for kind, step in zip(("encoder", "decoder"), steps, strict=True)
            if (why := reason(step))
        )

    def index_reason(self, name: str) -> str:
        """Why the repository index lists ``name`` unavailable: a translator the gateway decodes, as its
        readiness says (:meth:`unready_reason`: its decode workers dead, a Triton its steps cannot reach;
        the index said "not ready"); another model, its load error, as Triton's index gives it."""
        return self.unready_reason(name) if self._translates(name) else self.load_error(name)

    @property
    def decode_outage(self) -> str:
        """Why a translator cannot decode now ("" while each can): its decode workers restarting or
        stopped (:meth:`Translator.stopped`), a readiness answer's reason (it said only "server is not
        ready", and the operator went through the log to learn that a worker had died)."""
        pool = self.translators.translators if self.translators is not None else {}
        return "; ".join(f"translator {name!r}: {why}" for name, t in pool.items() if (why := t.stopped()))

    @property
    def outage(self) -> str:
        """Why the backend was last found unreachable (``--backend triton``; "" where it was reached,
        or the backend runs here): a readiness answer's reason, before a model index fetched earlier."""
        return getattr(self.backend, "outage", "")

    def metadata(self, name: str, version: str = "") -> ModelMetadata:
        """A translator the gateway serves: its entry, with the outputs its infer answers (the pool
        declares them); with Triton behind, Triton's view was its ``<name>`` model's (one hypothesis)."""
        if self._translates(name):
            return self.repository.get(name).metadata(version)
        return self.backend.metadata(name, version)

    def config(self, name: str, version: str = "") -> dict[str, Any]:
        if self._translates(name):
            entry = self.repository.get(name)
            entry.resolve_version(version)
            return entry.config_dict()
        return self.backend.config(name, version)

    async def batching_statistics(
        self, models: list[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """The statistics' batching half for ``models`` from a backend that batches them itself
        (Triton's ``batching_statistics``); none for translators the gateway decodes (their decoder
        steps are its own figures, and Triton's ``<name>`` model does not serve them)."""
        batching = getattr(self.backend, "batching_statistics", None)
        if batching is None:
            return {}
        if not models:  # every model asked for, none listed: the backend's list may be unknown
            await self._check_listed()
        wanted = [(name, version) for name, version in models if not self._translates(name)]
        return await batching(wanted) if wanted else {}

    async def _check_listed(self) -> None:
        """503 where a backend that batches elsewhere is not ready: its empty model list is then no
        answer (a Triton never reached lists nothing), as the statistics of a Triton reached once
        and lost since are a 503; a ready one that lists nothing serves nothing."""
        if not await self.backend.is_ready():
            raise Unavailable(
                "statistics unavailable: the backend is not ready (Triton unreachable?), so which "
                "models it serves is unknown",
                retry_after=self.retry_after_s,
            )

    async def infer(self, request: InferRequest) -> InferResponse:
        if self._translates(request.model):  # KServe: BYTES text in, BYTES translation out
            version = self.repository.get(request.model).resolve_version(request.version)
            response = await self.translator(request.model).infer(request)  # type: ignore[union-attr]
            return replace(response, version=version)  # the version served, as metadata lists it
        entry = self._backend_translator(request.model)
        if entry is not None:  # Triton's <name> model decodes it: refused as the gateway's translators refuse
            await check_backend_infer(
                request.model, request, entry_max_positions(entry.kiln), entry_source_tokenizer(entry)
            )
        return await self.backend.infer(request)

    def _backend_translator(self, name: str) -> Any | None:
        """The repository entry of translator ``name`` where the backend decodes it itself (Triton's
        ``<name>`` model, ``--triton-translate triton``); None otherwise, or where the gateway's copy of
        the repository does not hold it (Triton's model then checks the request alone)."""
        if self.translators is not None or self.repository is None:
            return None
        entry = getattr(self.repository, "entries", {}).get(name)
        if entry is None or entry.task != "translate" or not isinstance(entry.kiln, dict):
            return None
        return entry


def _decode_workers(translator: Any) -> str:
    """ "2 decode workers: threads kdec0.0-transfor, kdec0.1-transfor": a translator's schedulers and
    their threads' OS names (what top -H, py-spy and perf show), for the start-up line."""
    schedulers = getattr(translator, "schedulers", ())
    count = len(schedulers) or 1
    names = [s.thread_name for s in schedulers if getattr(s, "thread_name", None)]
    threads = f": thread{'s' if len(names) > 1 else ''} {', '.join(names)}" if names else ""
    return f"{count} decode worker{'s' if count > 1 else ''}{threads}"
