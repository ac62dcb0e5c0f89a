"""A kiln.json whose ``labels`` names a file that is not there (a hand-edited kiln.json, or its labels
file removed) leaves the classes answered by index, as documented, and now says so in one warning: the
classes were served by index without a word, though the loader's docstring promised one."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from serving.execution.repository import load_entry

CONFIG = """name: "plain"
platform: "onnxruntime_onnx"
max_batch_size: 4
input { name: "x" data_type: TYPE_FP32 dims: 3 }
output { name: "p" data_type: TYPE_FP32 dims: 3 }
"""


def _entry(root: Path, write_labels: bool) -> Path:
    directory = root / "plain"
    directory.mkdir(parents=True)
    (directory / "config.pbtxt").write_text(CONFIG)
    (directory / "kiln.json").write_text(json.dumps({"task": "classify", "labels": "labels.txt"}))
    if write_labels:
        (directory / "labels.txt").write_text("a\nb\nc\n")
    return directory


def test_a_missing_kiln_json_labels_file_is_answered_by_index_with_one_warning(
    tmp_path: Path, caplog
) -> None:
    directory = _entry(tmp_path, write_labels=False)
    with caplog.at_level(logging.WARNING, logger="serving.execution"):
        assert load_entry(directory).labels == {}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "'labels.txt', which is not a file" in lines[0], lines
    assert "answered by index" in lines[0] and lines[0].startswith("model plain: ")


def test_a_present_one_names_the_classes_without_a_warning(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="serving.execution"):
        assert load_entry(_entry(tmp_path, write_labels=True)).labels == {"p": ["a", "b", "c"]}
    assert caplog.records == []
