"""ONNX Runtime's threads of each model carry that model's name: they take the OS name of the thread
that opens their session, and every model's (one lone-request session per model, a thread per CPU but
one) was ``kiln-ort-load_0``, so ``top -H`` on a gateway of 200 models showed 200 (3 000 on 16 cores)
threads named after the loader, none saying whose, as if loading had leaked them."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.execution.onnxruntime import ort_thread_name
from serving.settings import Settings
from tests.repo_fixtures import write_identity_entries

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/task/<tid>/comm is Linux's")

NAMES = ("resnet18", "resnet18_int8", "clf")  # the first two share the 15 bytes' worth of prefix


def _thread_names() -> Counter:
    names: Counter = Counter()
    for task in Path("/proc/self/task").iterdir():
        try:
            names[(task / "comm").read_text().strip()] += 1
        except FileNotFoundError:  # ended meanwhile
            continue
    return names


def test_each_models_onnx_runtime_threads_are_named_after_it(tmp_path, caplog) -> None:
    write_identity_entries(tmp_path, NAMES)
    before = _thread_names()
    settings = Settings(model_repository=tmp_path, grpc_port=0, lone_request_threads=3)  # 2 pool threads
    with caplog.at_level("INFO", logger="serving.execution.onnxruntime"), TestClient(create_app(settings)):
        added = _thread_names() - before
    expected = {ort_thread_name(index, name) for index, name in enumerate(sorted(NAMES))}
    assert expected == {"kort0-clf", "kort1-resnet18", "kort2-resnet18_"}
    assert all(added[name] >= 2 for name in expected), added  # the first load may start one more
    assert added["kiln-ort-load_0"] <= 1, added  # the loading thread alone: was 1 + 2 a model
    for index, name in enumerate(sorted(NAMES)):  # each load line names them
        line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith(f"model {name} "))
        assert (
            f"lone-request threads 3, ONNX Runtime threads {ort_thread_name(index, name)}, weights " in line
        ), line
