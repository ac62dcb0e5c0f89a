"""A message past the gRPC message limit is refused with the same status and the same words by both gRPC
servers (``--grpc-server kiln``, the default, and ``grpcio``): grpc core's, as grpcio's server and
Triton's send them. Kiln's own server wrote its own lower-case variants ("received message larger than
max (...)", "decompressed message larger than max"), so a client or a log alert matching grpc core's
"Received message larger than max" missed every refusal once users switched servers."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2_grpc

from serving.protocol.grpc_server import GrpcHandle, start_grpc_server
from tests.h2_client import doubling_request
from tests.test_grpc import FakeBackend, LoopThread

LIMIT = 1 << 20  # the servers' message limit here (64 MiB by default): a small one keeps the test fast
OVER = doubling_request(np.zeros((1, 3), np.float32))
# twice the limit: grpc core lets a message inflate up to 1 KiB past it before "Decompressed ..." and then
# says "Received ..." of it; both servers say "Decompressed ..." of one inflating further
OVER.raw_input_contents.append(bytes(2 * LIMIT))  # gzips far under the limit
SIZE = OVER.ByteSize()


@pytest.fixture(scope="module", params=["kiln", "grpcio"])
def server(loop: LoopThread, request: pytest.FixtureRequest) -> Iterator[GrpcHandle]:
    handle = loop.run(
        start_grpc_server(FakeBackend(), "127.0.0.1", 0, server=request.param, max_message_bytes=LIMIT)
    )
    yield handle
    loop.run(handle.stop(0.5))


@pytest.fixture
def stub(server: GrpcHandle) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _refusal(stub, method: str, compression: grpc.Compression | None = None) -> tuple[grpc.StatusCode, str]:
    """The status and details ``method`` (``ModelInfer``, or ``ModelStreamInfer`` carrying it) answers
    ``OVER`` with."""
    streamed = method == "ModelStreamInfer"
    with pytest.raises(grpc.RpcError) as caught:
        answer = getattr(stub, method)(
            iter([OVER]) if streamed else OVER, timeout=30, compression=compression
        )
        if streamed:  # its status comes with the end of the stream
            list(answer)
    return caught.value.code(), caught.value.details()


TOO_LARGE = (
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    f"SERVER: Received message larger than max ({SIZE} vs. {LIMIT})",
)
INFLATED = (grpc.StatusCode.RESOURCE_EXHAUSTED, "Decompressed message larger than max")


def test_a_request_past_the_message_limit_is_refused_in_grpc_cores_words(stub) -> None:
    assert _refusal(stub, "ModelInfer") == TOO_LARGE


def test_a_stream_message_past_the_message_limit_is_refused_in_grpc_cores_words(stub) -> None:
    assert _refusal(stub, "ModelStreamInfer") == TOO_LARGE


def test_a_gzip_request_inflating_past_the_message_limit_is_refused_in_grpc_cores_words(stub) -> None:
    assert len(gzip.compress(OVER.SerializeToString())) < LIMIT  # refused once inflated, not at its prefix
    assert _refusal(stub, "ModelInfer", grpc.Compression.Gzip) == INFLATED


def test_a_gzip_stream_message_inflating_past_the_message_limit_is_refused_in_grpc_cores_words(stub) -> None:
    assert _refusal(stub, "ModelStreamInfer", grpc.Compression.Gzip) == INFLATED
