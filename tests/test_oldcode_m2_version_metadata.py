"""A version's metadata lists that version alone, as Triton 2.51's does: the gateway listed every
version of the model (``get_model_metadata("lenet", "1")["versions"] == ["1", "3"]``, where Triton
answers ``["1"]``), over HTTP and gRPC alike."""

from __future__ import annotations

import shutil

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.repo_fixtures import LiveServer, build_classifier_repository, held_grpc_port


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    from serving.app import create_app
    from serving.settings import Settings

    repository = build_classifier_repository(tmp_path_factory.mktemp("versions") / "repo")
    shutil.copytree(repository / "lenet" / "1", repository / "lenet" / "3")
    config = repository / "lenet" / "config.pbtxt"
    config.write_text(config.read_text().replace("num_versions: 1", "num_versions: 2"))
    with held_grpc_port() as grpc_port:
        settings = Settings(model_repository=repository, grpc_port=grpc_port, reuse_port=True)
        with LiveServer(create_app(settings)) as live:
            yield live.url, f"127.0.0.1:{grpc_port}"


@pytest.mark.parametrize("version", ["1", "3", "01"])
def test_a_versions_metadata_lists_that_version(gateway, version) -> None:
    http_url, grpc_url = gateway
    want = [version.lstrip("0")]  # "01" is version 1, as Triton reads it
    assert httpclient.InferenceServerClient(http_url).get_model_metadata("lenet", version)["versions"] == want
    assert (
        list(grpcclient.InferenceServerClient(grpc_url).get_model_metadata("lenet", version).versions) == want
    )


def test_the_models_metadata_still_lists_every_version(gateway) -> None:
    http_url, grpc_url = gateway
    assert httpclient.InferenceServerClient(http_url).get_model_metadata("lenet")["versions"] == ["1", "3"]
    assert list(grpcclient.InferenceServerClient(grpc_url).get_model_metadata("lenet").versions) == ["1", "3"]
