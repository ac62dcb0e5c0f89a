"""A model.onnx ONNX Runtime cannot read at all fails its load with ONNX Runtime's one error, without a
warning before it that its weights are not shared (which blamed the weight store for a broken file)."""

from __future__ import annotations

import logging

from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings
from tests.test_repo_g_preprocessing import GOOD, _entry


def test_a_corrupt_model_file_logs_only_its_load_failure(tmp_path, caplog):
    _entry(tmp_path, "corrupt", GOOD)
    (tmp_path / "corrupt" / "1" / "model.onnx").write_bytes(b"not an ONNX model")
    with (
        caplog.at_level(logging.WARNING),
        TestClient(create_app(Settings(model_repository=tmp_path, grpc_port=0))) as client,
    ):
        index = {m["name"]: m for m in client.post("/v2/repository/index", json={}).json()}
    assert index["corrupt"]["state"] == "UNAVAILABLE"
    assert "INVALID_PROTOBUF" in index["corrupt"]["reason"]
    logged = [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "corrupt" in r.getMessage()
    ]
    assert not [m for m in logged if "copies of its weights" in m], logged
    assert any("failed to load" in m and "INVALID_PROTOBUF" in m for m in logged), logged
