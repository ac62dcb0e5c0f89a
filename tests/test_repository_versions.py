"""The gateway names entries written by an older export at start-up, and still serves them; an entry is
older only when a later export version changed what export writes for its model."""

from __future__ import annotations

import json
import logging

from kiln.versions import CHANGED, EXPORT_VERSION, changes_since, current_version
from serving.execution.repository import Repository, exported_before


def _entry(root, name, kiln):
    directory = root / name
    directory.mkdir()
    (directory / "config.pbtxt").write_text(f'name: "{name}"\nplatform: "onnxruntime_onnx"\n')
    if kiln is not None:
        (directory / "kiln.json").write_text(json.dumps(kiln))


def _kiln(model, version):
    return {"model": {"name": model, "args": {}}, "export": {"export_version": version}}


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_entries_of_an_older_export_version_are_named_in_one_warning_and_still_load(tmp_path, caplog):
    last = current_version("resnet18")  # the last version that changed classifiers
    _entry(tmp_path, "old", _kiln("resnet18", last - 1))
    _entry(tmp_path, "current", _kiln("resnet18", last))
    _entry(tmp_path, "foreign", None)  # no kiln.json: not Kiln's to judge
    with caplog.at_level(logging.WARNING, logger="serving.execution.repository"):
        repository = Repository(tmp_path)
    assert sorted(repository.entries) == ["current", "foreign", "old"]
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and warnings[0].startswith("old exported by an older Kiln")
    # a wheel install has no Makefile; python -m export alone writes ./model_repository, not this one
    assert f"`make export` (python -m export CHECKPOINTS --repository {tmp_path}) rebuilds" in warnings[0]
    assert f"{last}: {CHANGED[last][1]}" in warnings[0]  # says what it lacks
    assert exported_before(repository.get("old"))
    assert not exported_before(repository.get("current"))
    assert not exported_before(repository.get("foreign"), EXPORT_VERSION)


def test_a_model_no_later_version_changed_is_current_however_old_its_entry(tmp_path, caplog):
    first = min(v for v, (models, _) in CHANGED.items() if "resnet18" in models)
    _entry(tmp_path, "classifier", _kiln("resnet18", first))
    _entry(tmp_path, "translator", _kiln("gru_attention", current_version("gru_attention")))
    with caplog.at_level(logging.WARNING, logger="serving.execution.repository"):
        repository = Repository(tmp_path)
    assert not _warnings(caplog)
    assert not exported_before(repository.get("classifier"))
    assert current_version("gru_attention") < EXPORT_VERSION and not exported_before(
        repository.get("translator")
    )
    assert exported_before(repository.get("translator"), EXPORT_VERSION)  # an explicit version still counts


def test_the_warning_names_only_the_changes_of_the_stale_entries_models(tmp_path, caplog):
    recurrent = [v for v, (models, _) in CHANGED.items() if "gru_attention" in models]
    others = [v for v, (models, _) in CHANGED.items() if "gru_attention" not in models]
    assert recurrent and others  # the table has both kinds, or this test says nothing
    _entry(tmp_path, "recurrent", _kiln("gru_attention", recurrent[-1] - 1))
    with caplog.at_level(logging.WARNING, logger="serving.execution.repository"):
        Repository(tmp_path)
    (warning,) = _warnings(caplog)
    assert f"{recurrent[-1]}: {CHANGED[recurrent[-1]][1]}" in warning
    assert not any(CHANGED[v][1] in warning for v in others)


def test_the_versions_table_is_consistent():
    assert max(CHANGED) == EXPORT_VERSION  # a bump says what it changed, and for which models
    assert current_version("lenet") == 11 and current_version("gru_attention") == 10
    assert current_version("transformer") == EXPORT_VERSION == 12
    assert changes_since(EXPORT_VERSION, "transformer") == [] and changes_since(0, "lenet") == [
        f"11: {CHANGED[11][1]}"
    ]
    assert [c.split(":")[0] for c in changes_since(3, "transformer")] == [str(v) for v in (*range(4, 11), 12)]


def test_a_repository_written_by_this_export_loads_without_a_warning(tmp_path, caplog):
    _entry(tmp_path, "current", _kiln("transformer", EXPORT_VERSION))
    with caplog.at_level(logging.WARNING, logger="serving.execution.repository"):
        Repository(tmp_path)
    assert not _warnings(caplog)


def test_the_classifier_names_export_versions_list_are_the_registered_classifiers():
    """kiln.versions cannot import the registry (the gateway imports it): its copy of the names must
    follow it, or a bump for classifiers would miss a new one."""
    from kiln.versions import CLASSIFIERS
    from training.models.registry import list_models

    assert list(CLASSIFIERS) == list_models("classify")
