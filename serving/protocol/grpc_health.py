"""gRPC's standard health checking protocol (``grpc.health.v1.Health``, grpc/doc/health-checking.md) on
the gateway's gRPC port, as Triton serves it (2.51 does; triton-inference-server/server#5267): ``Check``
answers SERVING while the gateway is ready (the truth of ``/v2/health/ready`` and ``ServerReady``: every
model loaded, not draining, no translator left without decode workers), else NOT_SERVING, so Kubernetes'
``grpc:`` probes, grpc-health-probe and load balancers' gRPC health checks can check it. ``Watch`` is
not served (UNIMPLEMENTED, as Triton, which serves ``Check`` alone): poll ``Check``.

The two messages are declared here in a pool of their own (grpcio-health-checking is not a dependency,
and a pool of our own cannot clash with a ``grpc/health/v1/health.proto`` another library registers).
A request message arrives unparsed: one that does not parse is INVALID_ARGUMENT here, where a KServe
method's is grpc core's INTERNAL.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from serving.errors import ServingError
from serving.execution.base import Backend
from serving.protocol.repository_index import known_metadata

SERVICE = "grpc.health.v1.Health"
KSERVE_SERVICE = "inference.GRPCInferenceService"  # a name for the whole server, as "" is


def _messages() -> tuple[Any, Any]:
    """HealthCheckRequest (``string service = 1``) and HealthCheckResponse (``ServingStatus status = 1``)."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="kiln/grpc_health_v1.proto", package="grpc.health.v1", syntax="proto3"
    )
    string, enum, optional = (
        descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        descriptor_pb2.FieldDescriptorProto.TYPE_ENUM,
        descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    request = proto.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=string, label=optional)
    response = proto.message_type.add(name="HealthCheckResponse")
    statuses = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        statuses.value.add(name=name, number=number)
    type_name = ".grpc.health.v1.HealthCheckResponse.ServingStatus"
    response.field.add(name="status", number=1, type=enum, type_name=type_name, label=optional)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    found = pool.FindMessageTypeByName
    return (
        message_factory.GetMessageClass(found("grpc.health.v1.HealthCheckRequest")),
        message_factory.GetMessageClass(found("grpc.health.v1.HealthCheckResponse")),
    )


HealthCheckRequest, HealthCheckResponse = _messages()
SERVING, NOT_SERVING = 1, 2

WATCH_REFUSAL = (
    "grpc.health.v1.Health/Watch is not served (as Triton, the gateway serves Check alone): "
    "poll grpc.health.v1.Health/Check instead"
)


class RawRequest:
    """A request class whose "parsing" keeps the message's bytes, for the servicer to parse itself (Kiln's
    server calls ``FromString``; grpcio's is given no deserializer)."""

    @staticmethod
    def FromString(data: Any) -> bytes:  # noqa: N802 (protobuf's name)
        return bytes(data)


class HealthServicer:
    """``grpc.health.v1.Health`` over the gateway's :class:`Backend` (every worker answers for itself).

    ``service`` "" or ``inference.GRPCInferenceService``: the gateway's readiness. A model's name: SERVING
    while the gateway is ready and that model is (``ModelReady``'s truth, its latest version). Any other
    name: NOT_FOUND, as the protocol asks for a service the server does not know (Triton answers the
    server's readiness whatever the name)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def Check(self, request: bytes, context: Any) -> Any:  # noqa: N802 (gRPC method names)
        try:
            service = HealthCheckRequest.FromString(request).service
        except DecodeError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a HealthCheckRequest: {error}")
        if service not in ("", KSERVE_SERVICE) and not await self._known(service):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown service {service[:200]!r}: ask for '' (the gateway), "
                f"{KSERVE_SERVICE!r} (the same) or the name of one of its models",
            )
        ready = await self.backend.is_ready()
        if ready and service not in ("", KSERVE_SERVICE):
            try:
                ready = await self.backend.model_ready(service, "") is True
            except ServingError:  # a probe that failed (Triton unreachable): not serving
                ready = False
        return HealthCheckResponse(status=SERVING if ready else NOT_SERVING)

    async def _known(self, name: str) -> bool:
        """Whether ``name`` is one of the gateway's models: one it lists (an entry it could not read
        included) or one it describes (a translator, one whose latest version failed), a model Triton
        loaded since the ``triton`` backend read its index included (``known_metadata``)."""
        if name in self.backend.list_models():
            return True
        try:
            await known_metadata(self.backend, name, "")
        except ServingError as error:
            return error.status != 404
        return True

    async def Watch(self, request: bytes, context: Any) -> None:  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, WATCH_REFUSAL)


def unary_methods(servicer: HealthServicer) -> dict[bytes, tuple[Any, Any]]:
    """Kiln's server's table of the service (``Watch``, a server stream, refused before any message, is
    served as a unary call: its client reads the same trailers-only status)."""
    return {
        f"/{SERVICE}/{name}".encode(): (getattr(servicer, name), RawRequest) for name in ("Check", "Watch")
    }


def generic_handler(servicer: HealthServicer) -> grpc.GenericRpcHandler:
    """grpcio's handler of the service, its requests handed over unparsed."""
    serialize = HealthCheckResponse.SerializeToString
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Check": grpc.unary_unary_rpc_method_handler(servicer.Check, response_serializer=serialize),
            "Watch": grpc.unary_stream_rpc_method_handler(servicer.Watch, response_serializer=serialize),
        },
    )
