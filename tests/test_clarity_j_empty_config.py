"""An entry whose config.pbtxt is empty, or names no platform or backend, is reported as such (its
file named), where it was "platform '' needs the triton backend"."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings
from tests.test_repo_g_preprocessing import GOOD, _entry


@pytest.mark.parametrize(
    ("config", "said"), [("", "is empty"), ("max_batch_size: 4\n", "names no platform or backend")]
)
def test_a_config_without_a_platform_is_reported_as_such(tmp_path, config, said):
    _entry(tmp_path, "bare", GOOD)
    (tmp_path / "bare" / "config.pbtxt").write_text(config)
    with TestClient(create_app(Settings(model_repository=tmp_path, grpc_port=0))) as client:
        index = {m["name"]: m for m in client.post("/v2/repository/index", json={}).json()}
    reason = index["bare"]["reason"]
    assert index["bare"]["state"] == "UNAVAILABLE"
    assert f"{tmp_path / 'bare' / 'config.pbtxt'} {said}" in reason
    assert "triton backend" not in reason
