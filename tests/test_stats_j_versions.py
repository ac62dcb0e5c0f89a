"""A request refused before its model ran counts under the version it named, however it wrote it: the
gateway serves ``/versions/01/`` (and gRPC's ``01``, `` 1``, ``+1``) as version 1, as Triton reads them,
and its refusals went to the latest version's failures in the statistics and ``kiln_requests_total``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.repo_fixtures import CHANNELS, SIZE
from tests.test_grpc import Gateway, run_gateway
from tests.test_oldcode_g_version_statistics import _two_versions


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, loop) -> Iterator[Gateway]:
    repository: Path = _two_versions(tmp_path_factory.mktemp("stats_j") / "repo")
    with run_gateway(loop, repository, intra_op_threads=1, max_body_bytes=4096) as running:
        yield running


def _failures(gateway: Gateway) -> dict[str, int]:
    """lenet's failed requests by version, as the statistics extension reports them."""
    stats = httpx.get(f"http://{gateway.http_url}/v2/models/lenet/stats").json()["model_stats"]
    return {stat["version"]: stat["inference_stats"]["fail"]["count"] for stat in stats}


@pytest.mark.parametrize("body", [b"{", b"x" * 5000], ids=["not-json", "over-the-body-limit"])
def test_an_http_refusal_for_version_01_counts_as_version_1s(gateway: Gateway, body: bytes) -> None:
    before = _failures(gateway)
    url = f"http://{gateway.http_url}/v2/models/lenet/versions/01/infer"
    assert httpx.post(url, content=body).status_code in (400, 413)
    after = _failures(gateway)
    assert after["1"] == before["1"] + 1 and after["2"] == before["2"], (before, after)


@pytest.mark.parametrize("version", ["01", " 1", "+1"])
def test_a_grpc_refusal_for_version_1_written_otherwise_counts_as_version_1s(
    gateway: Gateway, version: str
) -> None:
    before = _failures(gateway)
    request = service_pb2.ModelInferRequest(model_name="lenet", model_version=version)
    request.inputs.add(name="images", datatype="UINT8", shape=[1, SIZE, SIZE, CHANNELS])
    request.raw_input_contents.append(b"\x00" * 5)  # fewer bytes than the shape needs: refused unrun
    with grpc.insecure_channel(gateway.grpc_url) as channel, pytest.raises(grpc.RpcError) as caught:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = _failures(gateway)
    assert after["1"] == before["1"] + 1 and after["2"] == before["2"], (before, after)


def test_a_refusal_for_a_version_the_model_does_not_serve_still_adds_no_series(gateway: Gateway) -> None:
    url = f"http://{gateway.http_url}/v2/models/lenet/versions/007/infer"
    assert httpx.post(url, content=b"{").status_code == 404  # unknown version: before the body is read
    page = httpx.get(f"http://{gateway.http_url}/metrics").text
    assert 'version="007"' not in page and 'version="7"' not in page


@pytest.mark.parametrize("version", ["1", "01"])
def test_a_grpc_message_refused_unread_for_version_1_counts_as_version_1s(
    gateway: Gateway, version: str
) -> None:
    """Over the body limit: refused from its length prefix, before the message is parsed, counted for
    the model and version its first bytes name (it went to the latest version's failures)."""
    before = _failures(gateway)
    request = service_pb2.ModelInferRequest(model_name="lenet", model_version=version)
    request.inputs.add(name="images", datatype="UINT8", shape=[1, SIZE, SIZE, CHANNELS])
    request.raw_input_contents.append(b"\x00" * 5000)  # past the gateway's 4096-byte body limit
    with grpc.insecure_channel(gateway.grpc_url) as channel, pytest.raises(grpc.RpcError) as caught:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    after = _failures(gateway)
    assert after["1"] == before["1"] + 1 and after["2"] == before["2"], (before, after)
