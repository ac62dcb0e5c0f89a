"""A gRPC request's model version is read as Triton's gRPC front end reads it (``std::stol`` in
server/src/common.cc ``GetModelVersionFromString``): `` 1``, ``+1`` and ``1\\n`` are version 1 there,
and were INVALID_ARGUMENT here, so a client that worked against Triton failed against the gateway.
Triton's HTTP routes take digits alone (``/versions/([0-9]+)``), and so do the gateway's."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from serving.errors import BadRequest
from serving.execution.model_versions import parse_grpc_version
from serving.protocol.grpc_server import GrpcHandle, start_grpc_server
from tests.test_grpc import FakeBackend, LoopThread

TRITON_READS_AS_ONE = [" 1", "+1", "1\n", "\t+1 ", "01", "+001"]
REFUSED = [" ", "+", "+ 1", "++1", "-1", "1.5", "1abc", "x", "+" + str(2**63)]


@pytest.mark.parametrize("version", TRITON_READS_AS_ONE)
def test_white_space_and_a_plus_sign_around_a_grpc_version_are_read_as_triton_reads_them(version) -> None:
    assert parse_grpc_version(version) == "1"


@pytest.mark.parametrize("version", REFUSED)
def test_a_grpc_version_that_is_no_whole_number_stays_a_bad_request_naming_what_was_sent(version) -> None:
    with pytest.raises(BadRequest, match="positive integer") as refused:
        parse_grpc_version(version)
    assert repr(version[:40]) in str(refused.value)


def test_an_empty_grpc_version_is_the_latest() -> None:
    assert parse_grpc_version("") == ""


@pytest.fixture(scope="module")
def server() -> Iterator[GrpcHandle]:
    loop = LoopThread()
    handle = loop.run(start_grpc_server(FakeBackend(), "127.0.0.1", 0))
    yield handle
    loop.run(handle.stop(1.0))
    loop.close()


@pytest.mark.parametrize("version", [" 1", "+1", "1\n"])
def test_every_grpc_rpc_takes_a_version_triton_takes(server, version) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        assert client.is_model_ready("double", version)
        assert client.get_model_metadata("double", version).versions == ["1"]
        assert client.get_model_config("double", version).config.name == "double"
        x = grpcclient.InferInput("x", [1, 3], "FP32")
        x.set_data_from_numpy(np.ones((1, 3), np.float32))
        answer = client.infer("double", [x], model_version=version)
        assert answer.as_numpy("y").tolist() == [[2.0, 2.0, 2.0]]
    finally:
        client.close()


def test_a_grpc_version_triton_refuses_is_still_invalid_argument(server) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        with pytest.raises(InferenceServerException) as refused:
            client.get_model_metadata("double", "1.5")
        assert refused.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
    finally:
        client.close()
