"""gRPC health ``Check`` for a model Triton loaded after the ``triton`` backend last read its index: the
backend's list lacks it until it is asked whether that model is ready (``known_metadata``, as the KServe
routes ask), so ``Check`` answers its readiness, not NOT_FOUND until the next index check."""

from __future__ import annotations

import grpc

from serving.gateway import Gateway
from serving.protocol.grpc_health import HealthCheckRequest, HealthCheckResponse
from serving.protocol.grpc_server import start_grpc_server
from tests.test_grpc import FakeBackend

SERVING = 1


class _LoadedSince(FakeBackend):
    """FakeBackend whose list lacks ``later`` until ``model_ready("later")`` fetches it, as the
    ``triton`` backend's does for a model Triton loaded since it read the index."""

    def __init__(self) -> None:
        super().__init__()
        self.fetched = False

    def list_models(self) -> list[str]:
        return [*super().list_models(), *(["later"] if self.fetched else [])]

    async def model_ready(self, name: str, version: str = "") -> bool:
        if name == "later":
            self.fetched = True
        return await super().model_ready(name, version)


def test_check_of_a_model_loaded_since_the_index_was_read_answers_serving(loop) -> None:
    handle = loop.run(start_grpc_server(Gateway(_LoadedSince(), None), "127.0.0.1", 0, server="kiln"))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=HealthCheckRequest.SerializeToString,
                response_deserializer=HealthCheckResponse.FromString,
            )
            # before: NOT_FOUND ("unknown service 'later'"), the backend's list read alone
            assert check(HealthCheckRequest(service="later"), timeout=10).status == SERVING
    finally:
        loop.run(handle.stop(0.5))
