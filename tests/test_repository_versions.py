"""The gateway names entries written by an older export at start-up, and still serves them."""

from __future__ import annotations

import json
import logging

from kiln.versions import EXPORT_VERSION
from serving.execution.repository import Repository, exported_before


def _entry(root, name, kiln):
    directory = root / name
    directory.mkdir()
    (directory / "config.pbtxt").write_text(f'name: "{name}"\nplatform: "onnxruntime_onnx"\n')
    if kiln is not None:
        (directory / "kiln.json").write_text(json.dumps(kiln))


def test_entries_of_an_older_export_version_are_named_in_one_warning_and_still_load(tmp_path, caplog):
    _entry(tmp_path, "old", {"export": {"export_version": EXPORT_VERSION - 1}})
    _entry(tmp_path, "current", {"export": {"export_version": EXPORT_VERSION}})
    _entry(tmp_path, "foreign", None)  # no kiln.json: not Kiln's to judge
    with caplog.at_level(logging.WARNING, logger="serving.execution.repository"):
        repository = Repository(tmp_path)
    assert sorted(repository.entries) == ["current", "foreign", "old"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("old exported by an older Kiln")
    assert "make export" in warnings[0]
    assert not exported_before(repository.get("current"), EXPORT_VERSION)
    assert not exported_before(repository.get("foreign"), EXPORT_VERSION)


def test_a_repository_written_by_this_export_loads_without_a_warning(tmp_path, caplog):
    _entry(tmp_path, "current", {"export": {"export_version": EXPORT_VERSION}})
    with caplog.at_level(logging.WARNING, logger="serving.execution.repository"):
        Repository(tmp_path)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
