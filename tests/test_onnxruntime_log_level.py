"""``--log-level`` reaches ONNX Runtime's own logger, which writes to stderr in a format of its own: under
``--log-level error`` its warnings (a model's unused initializers, removed as it loads) were written
all the same, and ``--log-level debug`` showed none of its info lines."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from serving.execution.ort_options import ORT_LOG_SEVERITY
from tests.repo_fixtures import write_onnx_entry
from tests.test_gateway_lifecycle import _gateway

CONFIG = """name: "doubling"
platform: "onnxruntime_onnx"
max_batch_size: 8
input { name: "x" data_type: TYPE_FP32 dims: 3 }
output { name: "y" data_type: TYPE_FP32 dims: 3 }
"""
WARNING_LINE = re.compile(r"\[W:onnxruntime:[^\]]*\] Removing initializer 'unused'")
INFO_LINE = re.compile(r"\[I:onnxruntime:")


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """One model, as a foreign exporter may write it: a weight no node reads (ONNX Runtime warns as it
    removes it, in each session it opens on the file)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3])
    weights = [
        numpy_helper.from_array(np.full(3, 2.0, np.float32), "two"),
        numpy_helper.from_array(np.ones(3, np.float32), "unused"),
    ]
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "doubling", [x], [y], weights)
    return write_onnx_entry(tmp_path_factory.mktemp("ort-log-level"), graph, CONFIG)


@pytest.mark.parametrize(
    ("level", "warnings", "info"),
    [("error", False, False), ("info", True, False), ("debug", True, True)],
)
def test_onnxruntime_writes_what_the_log_level_asks_for(repository, tmp_path, level, warnings, info) -> None:
    """Each session opens the model's own file (``--no-share-weights``: a shared copy is ONNX Runtime's
    optimized one, its unused weight already gone)."""
    log = tmp_path / "gateway.log"
    with _gateway(repository, "--no-share-weights", "--log-level", level, log=log):
        pass  # ready: every session is open
    text = log.read_text()
    assert bool(WARNING_LINE.search(text)) is warnings, text
    assert bool(INFO_LINE.search(text)) is info, text


def test_every_log_level_has_an_onnxruntime_severity() -> None:
    from serving.settings import Settings

    levels = Settings.model_fields["log_level"].annotation.__args__
    assert set(ORT_LOG_SEVERITY) == set(levels)
    assert [ORT_LOG_SEVERITY[level] for level in levels] == sorted(ORT_LOG_SEVERITY.values(), reverse=True)
