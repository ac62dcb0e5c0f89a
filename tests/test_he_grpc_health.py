"""gRPC's standard health checking protocol (``grpc.health.v1.Health``) on the gateway's gRPC port, as
Triton serves it, on both gRPC servers: Kubernetes' ``grpc:`` probes, grpc-health-probe and load
balancers' gRPC health checks got UNIMPLEMENTED from every gateway. ``Check`` follows the gateway's
readiness (``ServerReady``, ``/v2/health/ready``); ``Watch`` is refused saying to poll ``Check``."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from serving.gateway import Gateway
from serving.protocol.grpc_health import WATCH_REFUSAL, HealthCheckRequest, HealthCheckResponse
from serving.protocol.grpc_server import GrpcHandle, start_grpc_server
from tests.test_grpc import FakeBackend, LoopThread

CHECK, WATCH = "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"
SERVING, NOT_SERVING = 1, 2


class _Readiness(FakeBackend):
    """FakeBackend whose readiness a test sets (``ready``)."""

    def __init__(self) -> None:
        super().__init__()
        self.ready = True

    async def is_ready(self) -> bool:
        return self.ready


@pytest.fixture(scope="module", params=["kiln", "grpcio"])
def served(loop: LoopThread, request: pytest.FixtureRequest) -> Iterator[tuple[GrpcHandle, _Readiness]]:
    """A gRPC server of each kind over a Gateway (its readiness the gateway's) and the backend behind it."""
    backend = _Readiness()
    handle = loop.run(start_grpc_server(Gateway(backend, None), "127.0.0.1", 0, server=request.param))
    yield handle, backend
    loop.run(handle.stop(0.5))


@pytest.fixture
def channel(served: tuple[GrpcHandle, _Readiness]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{served[0].port}") as channel:
        yield channel


@pytest.fixture
def backend(served: tuple[GrpcHandle, _Readiness]) -> Iterator[_Readiness]:
    yield served[1]
    served[1].ready = True


def _check(channel: grpc.Channel, service: str = "", compression: grpc.Compression | None = None) -> int:
    check = channel.unary_unary(
        CHECK,
        request_serializer=HealthCheckRequest.SerializeToString,
        response_deserializer=HealthCheckResponse.FromString,
    )
    return check(HealthCheckRequest(service=service), timeout=10, compression=compression).status


def _refusal(call, *args) -> tuple[grpc.StatusCode, str]:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as caught:
        answer = call(*args, timeout=10)
        if not isinstance(answer, bytes | HealthCheckResponse):
            list(answer)  # a server stream: its status comes with its end
    return caught.value.code(), caught.value.details()


def test_check_answers_serving_while_the_gateway_is_ready(channel, backend) -> None:
    assert _check(channel) == SERVING
    assert _check(channel, "inference.GRPCInferenceService") == SERVING
    assert _check(channel, "inference.GRPCInferenceService", grpc.Compression.Gzip) == SERVING


def test_check_answers_not_serving_while_the_gateway_is_not_ready(channel, backend) -> None:
    backend.ready = False
    assert _check(channel) == NOT_SERVING
    assert _check(channel, "double") == NOT_SERVING
    backend.ready = True
    assert _check(channel) == SERVING


def test_a_model_as_service_answers_that_models_readiness(channel, backend) -> None:
    assert _check(channel, "double") == SERVING
    assert _check(channel, "busy") == NOT_SERVING  # FakeBackend: busy is not ready


def test_an_unknown_service_is_not_found_saying_what_to_ask_for(channel, backend) -> None:
    code, details = _refusal(
        channel.unary_unary(CHECK, request_serializer=HealthCheckRequest.SerializeToString),
        HealthCheckRequest(service="nope"),
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert details.startswith("unknown service 'nope': ask for '' (the gateway)")


def test_watch_is_refused_saying_to_poll_check(channel, backend) -> None:
    watch = channel.unary_stream(WATCH, request_serializer=HealthCheckRequest.SerializeToString)
    assert _refusal(watch, HealthCheckRequest()) == (grpc.StatusCode.UNIMPLEMENTED, WATCH_REFUSAL)


def test_a_request_that_does_not_parse_is_invalid_argument(channel, backend) -> None:
    raw = channel.unary_unary(CHECK)  # bytes as they are: a string field cut short
    code, details = _refusal(raw, b"\x0a\x05ab")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("not a HealthCheckRequest: ")
