"""What the gateway's ``lifespan`` (:func:`serving.app.create_app`) opens and stops: the model
repository, the backend and its translator pool, the gRPC server, each built as the settings say
(:func:`start_parts`); :class:`Parts` stops them, and a step that fails is one :class:`LifespanFailed`
line naming it."""

from __future__ import annotations

import gc
import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from typing import Any

from fastapi import FastAPI

from serving.decoding.scheduler_config import SchedulerConfig
from serving.execution.base import Backend
from serving.execution.repository import Repository
from serving.execution.shared_weights import return_freed_memory
from serving.gateway import Gateway
from serving.metrics import GatewayMetrics
from serving.protocol.limits import BodyBudget
from serving.settings import Settings

log = logging.getLogger("serving.app")  # the gateway app's log, whichever part writes it


class LifespanFailed(RuntimeError):
    """A start-up or shutdown step of the gateway failed: the message is the one line the server logs
    (:meth:`serving.app.GatewayApp.__call__`), naming the step and why."""


class Parts:
    """The gateway's parts as they start, each with its stop. :meth:`stop` stops them last started
    first, and every one of them even when another's stop fails (a failed start stops what started)."""

    def __init__(self) -> None:
        self._stops: list[tuple[str, Callable[[], Any]]] = []

    def on_stop(self, what: str, stop: Callable[[], Any]) -> None:
        """Call ``stop()`` (a coroutine function or a plain one) when the gateway stops."""
        self._stops.append((what, stop))

    @staticmethod
    @contextmanager
    def starting(what: str) -> Iterator[None]:
        """An error inside the block becomes :class:`LifespanFailed` naming ``what``, in one line."""
        try:
            yield
        except Exception as exc:
            log.debug("gateway start-up failed: %s", what, exc_info=True)  # the traceback, for debugging
            raise LifespanFailed(f"gateway start-up failed: {what}: {_one_line(exc)}") from exc

    async def stop(self) -> list[str]:
        """Stop every part registered; returns those whose stop failed (each logged with its traceback)."""
        failed = []
        while self._stops:
            what, stop = self._stops.pop()
            try:
                result = stop()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # noqa: BLE001 - the other parts must still stop
                log.error("gateway shutdown: stopping %s failed: %s", what, exc, exc_info=True)
                failed.append(f"{what} failed: {_one_line(exc)}")
        return failed


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


async def start_parts(app: FastAPI, settings: Settings, given: Backend | None, parts: Parts) -> None:
    """Open the gateway's parts in order: the model repository, the backend (with the workers' board
    it publishes its runs on) and its translator pool, the gRPC server. Each stop is registered before
    its part starts, so a part that fails half-started is stopped too."""
    state = app.state
    parts.on_stop("the JSON helper process", state.json_offload.close)
    with parts.starting("the model repository"):
        state.repository = Repository(settings.model_repository)
    with parts.starting("the backend"):
        inner = given or make_backend(settings, state.repository, state.metrics)
        state.backend = make_gateway(settings, state.repository, inner, state.metrics)
        # the versions it serves label the statistics' series (a Triton's own, which the gateway's
        # repository need not hold)
        state.metrics.repository = state.backend
        parts.on_stop("the backend and its translators", state.backend.stop)
        stop_loading = getattr(state.backend, "stop_loading", None)  # a backend that loads models
        if getattr(state, "stop_asked", False) and stop_loading is not None:  # a stop before it was made
            stop_loading()
        await state.backend.start()
    with parts.starting(f"the gRPC server (--grpc-port {settings.grpc_port})"):
        grpc_handle = await start_grpc(
            settings, state.backend, state.body_budget, state.metrics, state.balancer
        )
    if grpc_handle is not None:
        state.grpc = grpc_handle
        parts.on_stop("the gRPC server", partial(grpc_handle.stop, settings.shutdown_grace_s))
        connections = getattr(grpc_handle.server, "connections", None)  # Kiln's server (grpcio: none)
        if connections is not None:
            state.metrics.watch_connections("grpc", connections.__len__)
    if freeze_loaded_objects():
        parts.on_stop("the garbage collector's freeze", gc.unfreeze)
    return_freed_memory()  # what loading the models freed (serving.execution.shared_weights)


def make_gateway(
    settings: Settings, repository: Repository, backend: Backend, metrics: GatewayMetrics
) -> Gateway:
    """The backend behind the translator pool that decodes over its runners (when it asks for one)."""
    return Gateway(
        backend,
        repository,
        scheduler_config=scheduler_config(settings),
        observer=metrics,
        retry_after_s=settings.retry_after_s,
        shutdown_grace_s=settings.shutdown_grace_s,
    )


def scheduler_config(settings: Settings) -> SchedulerConfig:
    """The translators' decoding schedulers as the settings say (the scheduler's defaults where unset)."""
    config = SchedulerConfig(
        max_queue=settings.max_queue_size,
        timeout_s=settings.request_timeout_s,
        retry_after_s=settings.retry_after_s,
        busy_loop_policy=settings.cpu_policy == "auto",
        cpu_workers=cpu_decode_workers(settings),
    )
    if settings.decode_workers is not None:
        config = replace(config, workers=settings.decode_workers)
    if settings.finish_hold_steps is not None:
        config = replace(config, finish_hold_steps=settings.finish_hold_steps)
    if settings.decode_release_idle_s is not None:
        config = replace(config, release_idle_s=settings.decode_release_idle_s or None)
    return config


def cpu_decode_workers(settings: Settings, cpus: int | None = None) -> int:
    """Decode workers a translator on the CPU gets by default: 2 in a lone gateway process with 2 cores
    or more, else 1. On 2 cores, one gateway process at c=32 (beam 4, three interleaved rounds): 2
    decode workers 1.35x the sentences/s of 1 (p50 24 vs 34 ms), c=8 1.08x, c=1 alike; each of several
    ``--workers`` processes keeps one, the layout ``make bench`` measures best on 2 cores (one process
    and one decode thread a core). More cores were not measured: ``--decode-workers N`` sets it."""
    from serving.execution.cpus import usable_cpus

    if settings.workers > 1 or settings.worker_board is not None:  # one of several processes
        return 1
    return 2 if (usable_cpus() if cpus is None else cpus) >= 2 else 1


def make_backend(settings: Settings, repository: Repository, metrics: GatewayMetrics) -> Backend:
    """The backend ``settings.backend`` names; the Triton one is imported only when chosen."""
    if settings.backend == "triton":
        from serving.execution.triton import TritonBackend

        return TritonBackend(
            settings.triton_url,
            timeout_s=settings.request_timeout_s,
            retry_after_s=settings.retry_after_s,
            repository=repository,
            translate=settings.triton_translate,
        )
    from serving.decoding.translator import FUSED_ATTENTION
    from serving.execution.occupancy import Occupancy
    from serving.execution.onnxruntime import TRANSLATOR_PARTS, OnnxRuntimeBackend
    from serving.execution.ort_options import OrtOptions

    options = OrtOptions(
        intra_op_threads=settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
        lone_request_threads=settings.lone_request_threads,
        load_threads=settings.load_threads,
        spin_us=settings.spin_us,
        lone_spin_us=settings.lone_spin_us,
        max_queue_size=settings.max_queue_size,
        default_timeout_s=settings.request_timeout_s,
        retry_after_s=settings.retry_after_s,
        shutdown_grace_s=settings.shutdown_grace_s,
        share_weights=settings.share_weights,
        weights_dir=settings.weights_dir,
    )
    if settings.batch_release_idle_s is not None:
        options = replace(options, release_idle_s=settings.batch_release_idle_s or None)
    occupancy = Occupancy(settings.worker_board, settings.worker_index)
    # a translator's encoder and decoder entries answer KServe calls on the graphs their decode
    # workers step on (one mapped copy of the weights for both)
    graphs = dict.fromkeys(TRANSLATOR_PARTS, FUSED_ATTENTION)
    return OnnxRuntimeBackend(repository, options, metrics=metrics, occupancy=occupancy, graphs=graphs)


def freeze_loaded_objects() -> bool:
    """Move everything alive once the models are loaded out of the garbage collector's reach.

    The ~80 000 objects of a loaded gateway (modules, sessions, tokenizers, routes) are never garbage,
    yet every full collection walked them all, ~40 ms with the GIL held, stalling the decode threads
    and every request in flight (CPython's ``gc.freeze``, as servers that fork after loading use it).
    Measured through the gateway (translation, 2 workers, c=32, interleaved): median 700 -> 744
    sentences/s. Returns False where the interpreter's GC is disabled (nothing to do).
    """
    if not gc.isenabled():
        return False
    gc.collect()
    gc.freeze()
    log.debug("gc: %d objects frozen after loading", gc.get_freeze_count())
    return True


async def start_grpc(
    settings: Settings,
    backend: Backend,
    budget: BodyBudget | None = None,
    metrics: GatewayMetrics | None = None,
    balancer: Any = None,
) -> Any:
    """Start the KServe gRPC server beside HTTP when the port is set and the module exists; its
    inference calls are counted in ``metrics`` as HTTP's are, its connections placed by ``balancer``
    (a worker's, :mod:`serving.handoff`)."""
    if not settings.grpc_port:
        return None
    try:
        from serving.protocol.grpc_server import start_grpc_server
    except ModuleNotFoundError as exc:
        if exc.name != "serving.protocol.grpc_server":
            raise
        log.warning(
            "serving.protocol.grpc_server is not available; serving HTTP only (no gRPC on port %d)",
            settings.grpc_port,
        )
        return None
    handle = start_grpc_server(
        backend,
        settings.host,
        settings.grpc_port,
        reuse_port=settings.reuse_port,
        server=settings.grpc_server,
        read_timeout_s=settings.read_timeout_s,
        budget=budget,
        send_timeout_s=settings.send_timeout_s,
        metrics=metrics,
        balancer=balancer,
        max_message_bytes=settings.max_body_bytes,  # KILN_MAX_BODY_BYTES bounds a gRPC message too
    )
    return await handle if inspect.isawaitable(handle) else handle
