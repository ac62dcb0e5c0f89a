"""A classifier of the user's own (README, "Your own classifier") is a classifier to the export versions
too: version 11 changed every classifier's int8 entry (docs/kiln-json.md), but only the zoo's names were
found stale, so an own classifier's entries written before it were "up to date" and served as written."""

from __future__ import annotations

import json
import logging

from export.repository import current_settings
from kiln.versions import CHANGED, EXPORT_VERSION, TRANSLATORS, changes_since, current_version
from serving.execution.repository import Repository, exported_before

OWN = "smallnet"  # the README's own classifier: registered by the user's module, not the zoo
SETTINGS = {"export_version": EXPORT_VERSION, "max_batch_size": 64}


def test_an_own_classifier_written_before_the_last_classifier_change_is_rebuilt():
    last = max(v for v, (models, _) in CHANGED.items() if "resnet18" in models)  # 11
    before = {**SETTINGS, "export_version": last - 1}
    assert current_version(OWN) == current_version("resnet18") == last
    assert not current_settings(before, SETTINGS, OWN)
    assert current_settings(SETTINGS, SETTINGS, OWN)
    assert current_settings(
        {**SETTINGS, "export_version": last}, SETTINGS, OWN
    )  # 12 changed translators only
    assert changes_since(last - 1, OWN) == [f"{last}: {CHANGED[last][1]}"]


def test_the_gateway_names_an_own_classifiers_old_entry(tmp_path, caplog):
    entry = tmp_path / OWN
    entry.mkdir()
    (entry / "config.pbtxt").write_text(f'name: "{OWN}"\nplatform: "onnxruntime_onnx"\n')
    kiln = {"model": {"name": OWN, "args": {}, "module": "mynets"}, "export": {"export_version": 10}}
    (entry / "kiln.json").write_text(json.dumps(kiln))
    with caplog.at_level(logging.WARNING, logger="serving.execution.repository"):
        repository = Repository(tmp_path)
    assert exported_before(repository.get(OWN))
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.startswith(f"{OWN} exported by an older Kiln") and CHANGED[11][1] in warning


def test_translators_and_unnamed_models_keep_their_own_versions():
    assert current_version("gru_attention") == 10 and current_version(None) == 1
    assert current_version("transformer") == 12
    assert changes_since(10, "gru_attention") == [] and changes_since(0, None) == []


def test_the_translator_names_are_the_registered_translators():
    """A model name none of these is taken for a classifier: the list must follow the registry."""
    from training.models.registry import list_models

    assert list(TRANSLATORS) == list_models("translate")
