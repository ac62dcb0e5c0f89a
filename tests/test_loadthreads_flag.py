"""``--load-threads`` (``KILN_LOAD_THREADS``) sets how many model versions the embedded backend loads at
once: the option existed (``OrtOptions.load_threads``) with no way to set it from the command line, so a
gateway of many large models on a small-memory node could not be told to load them one at a time."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.execution.onnxruntime import load_threads
from serving.execution.repository import Repository
from serving.lifespan import make_backend
from serving.metrics import GatewayMetrics
from serving.settings import Settings


def _backend(tmp_path: Path, **settings):
    chosen = Settings(model_repository=tmp_path, grpc_port=0, **settings)
    return make_backend(chosen, Repository(tmp_path), GatewayMetrics())


def test_the_flag_reaches_the_backends_loads(tmp_path: Path) -> None:
    assert load_threads(_backend(tmp_path, load_threads=1).options) == 1
    assert load_threads(_backend(tmp_path, load_threads=3).options) == 3


def test_unset_it_is_the_cpus_at_most_4_and_zero_is_refused(tmp_path: Path, monkeypatch) -> None:
    assert 1 <= load_threads(_backend(tmp_path).options) <= 4
    monkeypatch.setenv("KILN_LOAD_THREADS", "2")
    assert Settings(model_repository=tmp_path).load_threads == 2
    with pytest.raises(ValidationError, match="load_threads"):
        Settings(model_repository=tmp_path, load_threads=0)
