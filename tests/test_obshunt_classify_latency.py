"""A friendly classify request's end-to-end latency counts its images' decoding: ``kiln_request_latency_seconds``
and the statistics' ``success`` time observed the model's part alone, 2-8 ms for requests whose clients
waited 0.5-0.9 s while their 3000 x 3000 JPEGs decoded (and however long they queued for a decode slot),
where a translation's counts its tokenization: a latency alert on the gateway's own series never saw a
decode backlog."""

from __future__ import annotations

import io
import json
import time
from types import SimpleNamespace

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from serving.app import create_app
from serving.protocol import v1
from serving.settings import Settings
from tests.repo_fixtures import SIZE, build_classifier_repository

DECODING_S = 5.0  # how long the decoding took, as the clock the classify route reads when it begins


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((SIZE, SIZE), 7, dtype=np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


def test_a_classify_request_s_latency_and_statistics_count_the_decoding_of_its_images(tmp_path, monkeypatch):
    repository = build_classifier_repository(tmp_path / "repo")
    real = time.monotonic
    # the route reads when its decoding began DECODING_S early: a decode of that long, without the wait
    monkeypatch.setattr(v1, "time", SimpleNamespace(monotonic=lambda: real() - DECODING_S), raising=False)
    with TestClient(create_app(Settings(model_repository=repository, grpc_port=0))) as client:
        answer = client.post("/v1/models/lenet/classify", files=[("files", ("a.png", _png(), "image/png"))])
        assert answer.status_code == 200, answer.text
        tensor = {
            "name": "images",
            "datatype": "UINT8",
            "shape": [1, SIZE, SIZE, 1],
            "data": [1] * SIZE * SIZE,
        }
        infer = client.post("/v2/models/lenet/infer", content=json.dumps({"inputs": [tensor]}))
        assert infer.status_code == 200, infer.text
        metrics = client.app.state.metrics
        latency = metrics.sample("kiln_request_latency_seconds_sum", model="lenet")
        summed = metrics.sample("kiln_request_seconds_total", model="lenet", outcome="success")
        (stat,) = client.get("/v2/models/lenet/stats").json()["model_stats"]
    # the classify request's DECODING_S and more; the KServe request, which decodes nothing, well under it
    assert DECODING_S <= latency < 2 * DECODING_S, latency
    assert DECODING_S <= summed < 2 * DECODING_S, summed
    assert stat["inference_stats"]["success"]["count"] == 2
    assert stat["inference_stats"]["success"]["ns"] >= DECODING_S * 1e9
    # the model's own stages are the model's alone
    assert stat["inference_stats"]["compute_infer"]["ns"] < DECODING_S * 1e9
