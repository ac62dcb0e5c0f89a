"""The repository index lists a model that failed before any version loaded as Triton 2.51 does: no
``version`` (Triton writes one only where it is >= 0), with its state and why; ``"version": ""`` was
no version a client could ask for. A version that failed to load keeps its number, as in Triton."""

from __future__ import annotations

import asyncio

import pytest
from tritonclient.grpc import service_pb2

from serving.protocol.grpc_servicer import InferenceServicer
from tests.repo_fixtures import repository_client, write_entry_without_model, write_onnx_entry
from tests.test_triton_leftovers import _config, _double


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    """The gateway over ``double`` (serves), ``zerodims`` (refused when the repository is read),
    ``noversion`` (its version_policy selects no directory) and ``nofile`` (version 1 fails in the
    backend)."""
    root = tmp_path_factory.mktemp("index")
    policy = "version_policy: { specific: { versions: [ 7 ] } }\n"
    for name, config in (("double", _config("double")), ("zerodims", _config("zerodims", "0"))):
        write_onnx_entry(root, _double(name), config)
    write_onnx_entry(root, _double("noversion"), _config("noversion") + policy)
    write_entry_without_model(root, "nofile", _config("nofile"))
    with repository_client(root) as client:
        yield client


def _by_name(entries: list[dict]) -> dict[str, dict]:
    return {entry["name"]: entry for entry in entries}


def test_a_model_that_failed_before_any_version_has_no_version_in_the_index(client) -> None:
    index = _by_name(client.post("/v2/repository/index").json())
    for name in ("zerodims", "noversion"):
        assert "version" not in index[name], index[name]  # was "version": ""
        assert index[name]["state"] == "UNAVAILABLE" and index[name]["reason"], index[name]
    assert index["nofile"]["version"] == "1" and index["nofile"]["state"] == "UNAVAILABLE"
    assert index["double"] == {"name": "double", "version": "1", "state": "READY", "reason": ""}


def test_the_grpc_index_leaves_such_a_models_version_empty_as_tritons_does(client) -> None:
    servicer = InferenceServicer(client.app.state.backend)
    request = service_pb2.RepositoryIndexRequest()
    answer = asyncio.run(servicer.RepositoryIndex(request, None))
    index = {model.name: model for model in answer.models}
    assert index["zerodims"].version == "" and index["zerodims"].state == "UNAVAILABLE"
    assert index["zerodims"].reason
    assert index["nofile"].version == "1"
