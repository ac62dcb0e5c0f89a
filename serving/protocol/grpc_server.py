"""Starts the KServe v2 gRPC server beside HTTP: Kiln's own HTTP/2 server on the event loop
(:mod:`serving.protocol.grpc_h2`) or grpcio's grpc.aio, both serving the same
:class:`~serving.protocol.grpc_servicer.InferenceServicer` (the RPCs themselves, in grpc_servicer.py),
and the :class:`GrpcHandle` that stops it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from serving.execution.base import Backend
from serving.metrics import GatewayMetrics
from serving.protocol import grpc_health, grpc_io
from serving.protocol.grpc_health import HealthServicer
from serving.protocol.grpc_servicer import InferenceServicer
from serving.protocol.h2_watch import READ_TIMEOUT_S
from serving.protocol.limits import BodyBudget
from serving.protocol.send_watch import SEND_TIMEOUT_S
from serving.settings import is_dual_stack, join_host_port

log = logging.getLogger(__name__)

GrpcServerKind = Literal["kiln", "grpcio"]

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# grpc.aio answers keepalive pings, as Kiln's own server does, at any interval a client sends them and
# with or without calls open: grpc core's default policy (Triton's too, its --grpc-keepalive-* defaults) takes a
# ping sooner than 5 min after the last (2 h with no call open) for a strike, and at the third closes the
# connection with GOAWAY ENHANCE_YOUR_CALM "too_many_pings", cutting its calls and streams: what a client
# keeping its connection alive through a load balancer or sidecar gets (tritonclient's KeepAliveOptions).
# Pings closer together than half a second still strike (grpc core's default two strikes, then GOAWAY):
# its defence against a ping flood stays, and the fastest keepalive a grpc client sends is one a second.
KEEPALIVE_POLICY = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 500),
]


class _GenericOnly:
    """Stands in for the server while the generated registration runs, keeping its generic handler.

    The generated ``add_..._to_server`` also registers each of the service's 20 methods with gRPC
    core, and grpc.aio's accept loop then waits on one pending call per registered method, re-arming
    them all through ``asyncio.wait`` on every call it accepts (~20 futures each time: measured ~12 % of
    the event loop's time at c=64). Served through the generic handler alone, the loop waits on one.
    """

    def __init__(self) -> None:
        self.handlers: list[Any] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.handlers.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        """Not registered with gRPC core (see the class docstring); the generic handler serves them."""


def unary_methods(servicer: InferenceServicer) -> dict[bytes, tuple[Any, Any]]:
    """``{b"/inference.GRPCInferenceService/<Method>": (handler, request class)}`` for the unary methods
    ``servicer`` implements (those it inherits answer UNIMPLEMENTED), for Kiln's own server."""
    return _methods(servicer, streaming=False)


def stream_methods(servicer: InferenceServicer) -> dict[bytes, tuple[Any, Any]]:
    """The same for the bidirectional streaming methods it implements (``ModelStreamInfer``)."""
    return _methods(servicer, streaming=True)


def _methods(servicer: InferenceServicer, streaming: bool) -> dict[bytes, tuple[Any, Any]]:
    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    base = service_pb2_grpc.GRPCInferenceServiceServicer
    table = {}
    for method in service.methods:
        own = getattr(type(servicer), method.name, None)
        kind = (method.client_streaming, method.server_streaming)
        if kind != (streaming, streaming) or own is getattr(base, method.name, None):
            continue
        request_class = getattr(service_pb2, method.input_type.name)
        table[f"/{service.full_name}/{method.name}".encode()] = (
            getattr(servicer, method.name),
            request_class,
        )
    return table


def generic_handlers(servicer: InferenceServicer) -> list[Any]:
    """The KServe service's method handlers as one generic handler (every method, implemented or not)."""
    capture = _GenericOnly()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, capture)
    return capture.handlers


@dataclass
class GrpcHandle:
    """A running gRPC server: its bound port and how to stop it."""

    server: Any  # grpc.aio.Server or grpc_h2.H2GrpcServer: both stop(grace_s)
    port: int
    stopping: asyncio.Future | None = field(default=None, repr=False)
    # the calls the stop's grace cut: None where some were and grpc.aio does not say how many
    cut: int | None = field(default=0, repr=False)
    metrics: GatewayMetrics | None = field(default=None, repr=False)  # told when the stop cuts calls

    def in_flight(self) -> int | None:
        """The calls Kiln's server is answering now (a stream with a request in flight is one); None for
        grpc.aio, which does not count them."""
        connections = getattr(self.server, "connections", None)
        if connections is None:
            return None
        return sum(len(connection.calls) for connection in list(connections))

    def begin_stop(self, grace_s: float = 5.0) -> asyncio.Future:
        """Refuse new RPCs from now on and start draining; a later call returns the same drain."""
        if self.stopping is None:
            self.stopping = asyncio.ensure_future(self._drain(grace_s))
        return self.stopping

    async def _drain(self, grace_s: float) -> None:
        """The server's stop, and a warning naming the calls it cuts when the grace runs out: both
        servers cut them without a word (HTTP's drain says how many requests it cancels)."""
        if grace_s <= 0:  # stop(0) cuts every call in flight at once (grpc.aio's uncounted)
            calls = self.in_flight()
            if calls:
                self._tell_cut(calls, grace_s)
            await self.server.stop(grace_s)
            return
        stop = asyncio.ensure_future(self.server.stop(grace_s))
        # this timer is set before the server's own (its stop starts on the next turn of the loop), so
        # the calls are counted before the server closes their connections
        done, _ = await asyncio.wait({stop}, timeout=grace_s)
        if not done:
            self._tell_cut(self.in_flight(), grace_s)
        await stop

    def _tell_cut(self, calls: int | None, grace_s: float) -> None:
        if calls == 0:  # the last ones ended as the grace ran out
            return
        self.cut = calls
        if self.metrics is not None:  # the calls it cuts end UNAVAILABLE: counted 503, not 499
            self.metrics.stop_cuts()
        log.warning(
            "gRPC server stop: the shutdown grace (%g s) ran out with %s in flight: cut",
            grace_s,
            "calls (grpc.aio does not say how many)" if calls is None else f"{calls} call(s)",
        )

    async def stop(self, grace_s: float = 5.0) -> None:
        """Refuse new RPCs, let in-flight ones finish within ``grace_s``, then close (once)."""
        await self.begin_stop(grace_s)


async def start_grpc_server(
    backend: Backend,
    host: str,
    port: int,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    reuse_port: bool = False,
    server: GrpcServerKind = "kiln",
    read_timeout_s: float = READ_TIMEOUT_S,
    budget: BodyBudget | None = None,
    send_timeout_s: float = SEND_TIMEOUT_S,
    metrics: GatewayMetrics | None = None,
    balancer: Any = None,
) -> GrpcHandle:
    """Start ``inference.GRPCInferenceService`` and gRPC's health service (``grpc.health.v1.Health``:
    serving.protocol.grpc_health) on ``host:port`` (port 0 picks a free port).

    ``reuse_port`` lets several gateway workers share the port; otherwise a busy port is an error.
    ``server`` is Kiln's own HTTP/2 server on this event loop (serving/protocol/grpc_h2.py) or grpcio's
    grpc.aio; both serve the same servicer. Kiln's ends a call whose request pauses longer than
    ``read_timeout_s`` between DATA frames (serving/protocol/h2_watch.py), aborts a connection whose
    client leaves its answers unread ``send_timeout_s`` (serving/protocol/send_watch.py) and holds its
    calls' request bytes in the HTTP side's ``budget`` (UNAVAILABLE past it); grpc.aio has none of these.
    ``metrics`` counts the inference calls beside HTTP's (:class:`InferenceServicer`). Kiln's server
    places each connection it accepts with ``balancer`` (a worker's :class:`serving.handoff.Balancer`:
    handed to the worker holding fewest); grpc.aio's are accepted by gRPC core and stay where they land.
    """
    servicer = InferenceServicer(backend, metrics, pieces=server == "kiln")
    health = HealthServicer(backend)
    if server == "kiln":
        limits = (max_message_bytes, reuse_port, read_timeout_s, budget, send_timeout_s)
        handle = await _start_kiln_server(servicer, health, host, port, *limits, balancer)
    else:
        handle = await _start_grpcio_server(servicer, health, host, port, max_message_bytes, reuse_port)
    handle.metrics = metrics
    return handle


async def _start_grpcio_server(
    servicer: InferenceServicer,
    health: HealthServicer,
    host: str,
    port: int,
    max_message_bytes: int,
    reuse_port: bool,
) -> GrpcHandle:
    """grpcio's grpc.aio server over ``servicer``, its methods through one generic handler (and
    ``health``'s through another)."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),  # answers uncapped, as Kiln's and Triton's
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        *KEEPALIVE_POLICY,
    ]
    aio = grpc.aio.server(options=options)
    aio.add_generic_rpc_handlers([*generic_handlers(servicer), grpc_health.generic_handler(health)])
    address = join_host_port(host, port)  # gRPC core binds [::] on both families
    try:
        bound = aio.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"cannot bind the gRPC server to {address}")
    await aio.start()
    experiments = os.environ.get(grpc_io.ENV)  # as python -m serving set it before grpc started (grpc_io.py)
    log.info(
        "KServe v2 gRPC listening on %s%s",
        join_host_port(host, bound),
        f" ({grpc_io.ENV}={experiments})" if experiments else "",
    )
    return GrpcHandle(server=aio, port=bound)


async def _start_kiln_server(
    servicer: InferenceServicer,
    health: HealthServicer,
    host: str,
    port: int,
    max_message_bytes: int,
    reuse_port: bool,
    read_timeout_s: float,
    budget: BodyBudget | None,
    send_timeout_s: float,
    balancer: Any = None,
) -> GrpcHandle:
    from serving.protocol.grpc_h2 import H2GrpcServer

    methods, streams = (
        {**unary_methods(servicer), **grpc_health.unary_methods(health)},
        stream_methods(servicer),
    )
    limits = (max_message_bytes, read_timeout_s, budget, send_timeout_s)
    server = H2GrpcServer(methods, *limits, streams, balancer)
    try:
        bound = await server.listen(_listen_host(host, port), port, reuse_port)
    except OSError as error:
        raise OSError(f"cannot bind the gRPC server to {join_host_port(host, port)}: {error}") from error
    log.info("KServe v2 gRPC listening on %s (Kiln's HTTP/2 server)", join_host_port(host, bound))
    return GrpcHandle(server=server, port=bound)


def _listen_host(host: str, port: int) -> str | None:
    """What Kiln's server binds for ``host``: ``::`` is every interface of both families, which asyncio
    binds as None (0.0.0.0 and ::, one socket each: it makes an IPv6 socket IPv6 only), but only on a
    fixed port (with port 0 each socket would draw its own)."""
    return None if is_dual_stack(host) and port else host
