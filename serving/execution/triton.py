"""The ``triton`` backend: forward every request to a running Triton server with tritonclient (gRPC or HTTP).

Model metadata and configs come from the backend's copy of Triton's model list
(:mod:`serving.execution.triton_models`, fetched once Triton answers and again when its index
changes). Triton being unreachable is a 503 with Retry-After, never a crash: the client is
dropped and rebuilt on the next call (:mod:`serving.execution.triton_connection`, the connection and
its errors), and the model list is fetched again, so the gateway recovers as soon as Triton is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from serving.errors import BadRequest, DeadlineExceeded, ModelNotFound, ServingError, Unavailable
from serving.execution.base import InferRequest, InferResponse, ModelMetadata, Runner
from serving.execution.datatypes import datatype_of
from serving.execution.triton_connection import grpc_channel_args, ready_now
from serving.execution.triton_models import TritonModels, askable

log = logging.getLogger(__name__)


def _batching_fields(stat: Any) -> dict[str, Any]:
    """The batching half of one ``ModelStatistics`` message (Triton's), as the gateway's statistics
    answer it (plain ints; the requests' outcomes, ``success`` and ``fail``, stay the gateway's)."""
    duration = lambda d: {"count": int(d.count), "ns": int(d.ns)}  # noqa: E731
    parts = ("compute_input", "compute_infer", "compute_output")
    inference = stat.inference_stats
    return {
        "inference_stats": {
            field: duration(getattr(inference, field))
            for field in ("queue", *parts, "cache_hit", "cache_miss")
        },
        "batch_stats": [
            {"batch_size": int(b.batch_size), **{part: duration(getattr(b, part)) for part in parts}}
            for b in stat.batch_stats
        ],
        "inference_count": int(stat.inference_count),
        "execution_count": int(stat.execution_count),
        "last_inference": int(stat.last_inference),
    }


# How the gateway translates over Triton: "scheduler" runs its own iteration-level beam search over
# Triton's <name>_encoder / <name>_decoder; "triton" calls Triton's <name> python model (BLS inside).
# "triton" is the default: `make bench` measured it faster here (754 vs 411 tokens/s at 32 concurrent
# requests, beam 4): the scheduler pays two gRPC round trips per decoder step into python-backend
# models, while Triton's model makes its encoder/decoder calls in-process through BLS.
TRANSLATE_MODES = ("scheduler", "triton")
# why a runner's call failed after its cancel (a decoding scheduler's stop past its grace)
CANCELLED = "the call was cancelled: the gateway is stopping"


class TritonBackend(TritonModels):
    """Forward to the Triton at ``url`` (``host:port``) over its connection; readiness follows Triton's own."""

    def __init__(
        self,
        url: str,
        protocol: str = "grpc",
        timeout_s: float = 30.0,
        *,
        retry_after_s: float = 1.0,
        probe_timeout_s: float = 2.0,
        resync_interval_s: float = 1.0,
        repository: Any = None,
        translate: str = "triton",
    ) -> None:
        if translate not in TRANSLATE_MODES:
            raise ValueError(f"translate must be one of {TRANSLATE_MODES}, got {translate!r}")
        super().__init__(
            url,
            protocol,
            retry_after_s=retry_after_s,
            probe_timeout_s=probe_timeout_s,
            resync_interval_s=resync_interval_s,
        )
        self.timeout_s = timeout_s
        self.translate_mode = translate if repository is not None else "triton"
        self.repository = repository
        # "scheduler": the gateway's translator pool decodes over this backend's runners.
        self.runs_translators_in_gateway = self.translate_mode == "scheduler"
        # why Triton was logged unready this outage (empty: since ready): an outage is a line, not one a
        # probe; a set, as under traffic the reason alternates ("refused", "closed during the call")
        self._unready_said: set[str] = set()
        # why the last probe (the server's or a model's readiness) found Triton unreachable ("" since one
        # reached it): the readiness answers' reason then, not the model index fetched before the outage
        # (health.not_ready_reason, unready_reason)
        self.outage = ""

    # -- Backend protocol -------------------------------------------------------------------------

    async def start(self) -> None:
        """Fetch the model list; an unreachable Triton is logged, not fatal (readiness says so).

        Requests need that list (their model's metadata), so until it is fetched a background task
        asks again every ``RECONNECT_POLL_S``: the gateway serves within that of Triton's readiness,
        without waiting for a health check to trigger the fetch.
        """
        self._running = True
        try:
            await self._sync(force=True)
        except ServingError as error:
            log.warning("Triton backend starts unready: %s", error.message)
            self._unready_said = {error.message}
            self.outage = error.message
            self._watch()

    async def _sync(self, *, force: bool = False, now: bool = False) -> None:
        """As :class:`TritonModels`'s; a list fetched (by the watcher or a request too, not only a probe)
        ends the outage logged, so that the next one is a line again, whatever its message."""
        await super()._sync(force=force, now=now)
        if self._synced:
            self._unready_said = set()

    async def stop(self) -> None:
        self._running = False
        for task in (self._watcher, self._refresh):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._drop_connection()

    def runner(self, name: str, graph: Any = None) -> Runner:
        """A blocking Runner calling entry ``name`` on Triton (the decoding scheduler runs it in a thread);
        ``graph`` is ignored: Triton runs the entry's own model file."""
        if self.protocol == "grpc":
            import tritonclient.grpc as client_module

            client = client_module.InferenceServerClient(self.url, channel_args=grpc_channel_args())
            extra = {"client_timeout": self.timeout_s}
            probe = {"client_timeout": self.probe_timeout_s}
        else:
            import tritonclient.http as client_module

            client = client_module.InferenceServerClient(self.url, network_timeout=self.timeout_s)
            extra = probe = {}
        entry = self.repository.get(name)
        inputs = [t.name for t in entry.inputs()]
        outputs = [client_module.InferRequestedOutput(t.name) for t in entry.outputs()]
        cancelled = threading.Event()

        def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            tensors = []
            for key in inputs:
                value = np.ascontiguousarray(feed[key])
                value = value[:, None] if value.ndim == 1 else value  # per-row scalars travel as [rows, 1]
                tensor = client_module.InferInput(key, list(value.shape), datatype_of(value))
                tensor.set_data_from_numpy(value)
                tensors.append(tensor)
            # cancelled, its channel is closed: a call then (the other runner's next, after this one's
            # hung call was cancelled) was grpc's ValueError, a 500 and a traceback, not the stop's 503
            if cancelled.is_set():
                raise self._unavailable(CANCELLED)
            try:
                result = client.infer(name, tensors, outputs=outputs, **extra)
            except ValueError:  # grpc's "Cannot invoke RPC on closed channel!": cancelled since the look
                if cancelled.is_set():
                    raise self._unavailable(CANCELLED) from None
                raise
            except InferenceServerException as error:  # Triton's answer, or gRPC's lost link: its status
                if cancelled.is_set():
                    raise self._unavailable(CANCELLED) from None
                mapped = self._error_for(error)
                if isinstance(mapped, ModelNotFound) and not ready_now(client, probe):
                    mapped = self._draining(mapped)
                raise mapped from None
            except OSError as error:  # the HTTP client's lost link (refused, reset)
                raise self._unavailable(error) from None
            return {o.name(): result.as_numpy(o.name()) for o in outputs}

        def cancel() -> None:
            """End the calls in flight at once (a decoding scheduler's stop past its grace): closing the
            channel ends them; a hung Triton (SIGSTOP) held the decode thread, and with it the gateway's
            stop, until ``timeout_s``. The runner is done after it."""
            cancelled.set()
            client.close()

        if self.protocol == "grpc":  # the HTTP client's calls cannot be ended from another thread
            run.cancel = cancel  # type: ignore[attr-defined]
        return run

    def list_models(self) -> list[str]:
        """The models Triton lists: those it serves, and those it does not (``load_error`` says why)."""
        return sorted({*self._models, *self._unready})

    def is_live(self) -> bool:
        return True  # the gateway process itself; Triton's state is readiness

    async def is_ready(self) -> bool:
        """Triton's readiness; (re)fetch the model list when Triton was down or never seen."""
        try:
            ready = await self._call("is_server_ready")
            self.outage = ""  # reached: its index says why it is not ready, where a model failed
            if not ready:  # its index read again (at most once per resync_interval_s): the reason
                with contextlib.suppress(ServingError):  # is the failed load's error, not "not loaded"
                    await self._sync(force=not self._synced)  # of a list read before that load
                return False
            if not self._synced:
                await self._sync(force=True)
                self._unready_said = set()
                return True
        except ServingError as error:
            self._synced = False
            self.outage = error.message
            level = logging.DEBUG if error.message in self._unready_said else logging.INFO  # said: debug
            if len(self._unready_said) >= 64:  # reasons that differ at every probe: bounded
                self._unready_said.clear()
            self._unready_said.add(error.message)
            log.log(level, "Triton not ready: %s", error.message)
            return False
        self._unready_said = set()
        try:  # a ready Triton whose index a probe could not read stays ready on the list it had
            await self._sync()
        except ServingError as error:
            log.info("checking Triton's model index failed (its model list stands): %s", error.message)
        return True

    def load_error(self, name: str) -> str:
        """Why ``name`` failed to load, as Triton's repository index says ("" where it did not: served,
        or never loaded, loading or unloaded in ``--model-control-mode explicit``, which the readiness
        answer named "failed to load: not loaded"; requests for it still get the 404 saying why)."""
        return self._unready.get(name, "") if name in self._failed and name not in self._models else ""

    def unready_reason(self, name: str) -> str:
        """Why Triton does not serve ``name``: Triton unreachable or hung (the last call found it so; the
        answer said only "model 'x' is not ready"), else as its index says: a failed load's reason, or
        "not loaded" (never loaded, or unloaded: ``--model-control-mode explicit``); "" where it serves it."""
        if self.outage:
            return self.outage
        return "" if name in self._models else self._unready.get(name, "")

    async def model_ready(self, name: str, version: str = "") -> bool:
        if not askable(name):  # Triton would answer for the model named up to the NUL
            raise ModelNotFound(f"unknown model {name!r}; Triton serves {sorted(self._models)}")
        try:
            ready = bool(await self._call("is_model_ready", name, version))
        except (Unavailable, DeadlineExceeded) as error:
            self.outage = error.message  # the model readiness answer's reason (unready_reason)
            return False
        self.outage = ""  # reached
        if ready and name not in self._models:  # loaded since the list was fetched: fetched now, as
            with contextlib.suppress(ServingError):  # its requests follow (they ask again; this stands)
                await self._sync(force=not self._synced, now=True)
        elif not ready and self._synced and not self._listed(name):
            with contextlib.suppress(ServingError):  # listed since the list was fetched?
                await self._sync()
            if self._synced and not self._listed(name):  # unknown: the 404 the embedded backend gives
                raise ModelNotFound(f"unknown model {name!r}; Triton serves {sorted(self._models)}")
        return ready

    def _listed(self, name: str) -> bool:
        """Whether Triton's index lists ``name``, served or not (Triton answers an unknown model's
        readiness "not ready", which was a 400 here where the embedded backend answers 404)."""
        return name in self._models or name in self._unready

    def metadata(self, name: str, version: str = "") -> ModelMetadata:
        return self._cached(name, version)[0]

    def config(self, name: str, version: str = "") -> dict[str, Any]:
        return self._cached(name, version)[1]

    async def infer(self, request: InferRequest) -> InferResponse:
        """Forward one request; the outputs come back as numpy arrays."""
        await self._ensure_known(request.model)
        self._cached(request.model, request.version)
        module = self._module()
        inputs = [self._input(module, name, array) for name, array in request.inputs.items()]
        counts = request.classification
        wanted = request.outputs or list(counts)
        outputs = [module.InferRequestedOutput(name, class_count=int(counts.get(name, 0))) for name in wanted]
        timeout = request.time_limit(self.timeout_s)  # the gateway's limit bounds the client's
        extra = {"client_timeout": timeout} if self.protocol == "grpc" else {}
        # Decoding options of a translator (beam_size, ...) travel as KServe request parameters, as
        # does any other the client sent (Triton hands them to the model); classification is class_count.
        if request.parameters:
            extra["parameters"] = _forwardable(request.parameters)
        if request.priority:  # Triton queues it at that level (its config's priority_levels)
            extra["priority"] = request.priority
        try:
            result = await self._call(
                "infer",
                request.model,
                inputs,
                model_version=request.version,
                outputs=outputs or None,
                request_id=request.request_id,
                timeout_s=timeout,
                **extra,
            )
        except ModelNotFound as error:  # Triton's answer for a model its list holds
            mapped = await self._unless_draining(error)
            if mapped is error:  # unloaded from a ready Triton: the list is checked again
                self._refresh_soon()
            raise mapped from None
        except BadRequest:  # maybe shaped by metadata Triton changed since (a reload): fetched again
            self._recheck(request.model)
            raise
        return InferResponse(
            model=request.model,
            version=self._response_field(result, "model_version") or request.version,
            outputs={name: result.as_numpy(name) for name in self._output_names(result)},
            request_id=request.request_id,
        )

    async def batching_statistics(
        self, models: list[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """How Triton queued, batched and ran each of ``models`` (``(name, version)`` pairs), by name, in
        the statistics extension's fields (``queue``, ``compute_*``, ``batch_stats``, the counts, the last
        inference), by ``(name, version)``: the batching is Triton's here, so the gateway's statistics
        take these figures from it. One call for one model version, else one for all (Triton's answer
        lists every version of every model); a model or version Triton does not report is left out."""
        wanted = set(models)
        if not wanted:
            return {}
        name, version = next(iter(wanted)) if len(wanted) == 1 else ("", "")
        reply = await self._call("get_inference_statistics", name, version)
        if self.protocol == "http":  # JSON numbers; over gRPC the message itself (int64 fields)
            reply = json_format.ParseDict(
                reply, service_pb2.ModelStatisticsResponse(), ignore_unknown_fields=True
            )
        return {
            (stat.name, stat.version): _batching_fields(stat)
            for stat in reply.model_stats
            if (stat.name, stat.version) in wanted
        }

    @staticmethod
    def _input(module: Any, name: str, array: np.ndarray) -> Any:
        try:
            datatype = datatype_of(np.asarray(array))
        except TypeError as error:
            raise BadRequest(f"input {name!r}: {error}") from None
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(np.asarray(array))
        return tensor

    def _output_names(self, result: Any) -> list[str]:
        response = result.get_response()
        if self.protocol == "grpc":
            return [out.name for out in response.outputs]
        return [out["name"] for out in response.get("outputs", [])]

    def _response_field(self, result: Any, key: str) -> str:
        response = result.get_response()
        return str(getattr(response, key, "") if self.protocol == "grpc" else response.get(key, ""))


def _forwardable(parameters: dict[str, Any]) -> dict[str, Any]:
    """``parameters`` as tritonclient can forward them: it writes every integer as an int64_param, so
    one past int64 (a uint64 from a gRPC client, or JSON's unbounded numbers) is the client's 400, not
    tritonclient's ValueError and a 500."""
    for key, value in parameters.items():
        if isinstance(value, int) and not isinstance(value, bool) and not -(1 << 63) <= value < 1 << 63:
            raise BadRequest(
                f"parameter {key!r} is past int64, which Triton's client forwards: {value}"[:200]
            )
    return parameters
