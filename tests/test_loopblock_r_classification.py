"""Triton's classification extension writes a string per class asked for: a legal class_count over a
large batch (64 rows of 1000 classes: 139 ms of Python) held the gateway's event loop, every other
request waiting. Past ``INLINE_CLASSES`` strings it is written on a thread; a small one stays inline."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving.errors import BadRequest, is_models_answer
from serving.execution import onnxruntime
from tests.repo_fixtures import MAX_BATCH, SIZE, build_classifier_repository, repository_client
from tests.test_loopblock_r_off_the_loop import on_a_running_loop


def _body(rows: int, count: int) -> dict:
    images = np.zeros((rows, SIZE, SIZE, 1), np.uint8)
    return {
        "inputs": [
            {
                "name": "images",
                "datatype": "UINT8",
                "shape": list(images.shape),
                "data": images.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"classification": count}}],
    }


def test_a_large_classification_is_written_off_the_event_loop_and_a_small_one_inline(
    tmp_path, monkeypatch
) -> None:
    on_loop: list[bool] = []
    write = onnxruntime.classification

    def recording(*args, **kwargs):
        on_loop.append(on_a_running_loop())
        return write(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "classification", recording)
    monkeypatch.setattr(onnxruntime, "INLINE_CLASSES", 4)  # the lenet fixture has 3 classes
    repository = build_classifier_repository(tmp_path / "repo")
    with repository_client(repository) as client:
        large = client.post("/v2/models/lenet/infer", json=_body(MAX_BATCH, 3))
        small = client.post("/v2/models/lenet/infer", json=_body(1, 3))
    assert large.status_code == small.status_code == 200, (large.text, small.text)
    [output] = large.json()["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [MAX_BATCH, 3]
    assert all(len(entry.split(":")) == 3 for entry in output["data"])  # score:index:label
    assert on_loop == [False, True]


def test_a_refused_classification_off_the_loop_is_still_the_models_answer() -> None:
    """A type Triton cannot rank is a 400 naming the model's answer, from the thread as inline."""
    scores = np.zeros((64, 100), np.float16)  # 6400 classes asked for: past INLINE_CLASSES
    with pytest.raises(BadRequest, match="unsupported type 'FP16'") as refused:
        asyncio.run(onnxruntime._classified(scores, 100, None, True))
    assert is_models_answer(refused.value)
