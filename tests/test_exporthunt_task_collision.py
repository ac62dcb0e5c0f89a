"""A checkpoint named as a model of the other task in the repository (a classifier ``transformer.pt``
beside the translator ``transformer``): the same name counted as the same model, so the classifier
replaced the translator's python entry and left its encoder and decoder entries serving the old
translator, without a word. It is refused before any work, naming what it would replace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.entry_plan import check_entry_plan
from export.pipeline import export_checkpoint
from export.repository import RepositoryError
from export.results import ExportOptions
from tests.repo_fixtures import _tiny_checkpoint

TRANSLATOR = {"transformer": "translate", "transformer_encoder": "translate_encoder",
              "transformer_decoder": "translate_decoder"}  # fmt: skip


def _translator_entries(repository: Path) -> dict[str, str]:
    """The translator ``transformer``'s entries (their kiln.json alone: all the refusal reads)."""
    written = {}
    for entry, task in TRANSLATOR.items():
        (repository / entry).mkdir(parents=True)
        meta = {
            "kiln_format": 1,
            "name": entry,
            "task": task,
            "source_checkpoint": {"path": "checkpoints/transformer.pt", "model": "transformer"},
        }
        written[entry] = json.dumps(meta)
        (repository / entry / "kiln.json").write_text(written[entry], encoding="utf-8")
    return written


@pytest.fixture
def classifier(tmp_path: Path) -> Path:
    return _tiny_checkpoint(tmp_path / "mine" / "transformer.pt", "lenet", 0)


def test_a_classifier_named_as_a_translator_in_the_repository_is_refused(tmp_path, classifier) -> None:
    repository = tmp_path / "repo"
    written = _translator_entries(repository)
    with pytest.raises(RepositoryError, match="is translator 'transformer''s") as caught:
        export_checkpoint(classifier, repository, tensorrt="off")
    assert "transformer_decoder, transformer_encoder" in str(caught.value)
    assert "a classifier checkpoint of the same name" in str(caught.value)
    assert {p.name: (p / "kiln.json").read_text(encoding="utf-8") for p in repository.iterdir()} == written


def test_the_run_is_refused_before_any_checkpoint_is_written(tmp_path, classifier) -> None:
    repository = tmp_path / "repo"
    _translator_entries(repository)
    with pytest.raises(RepositoryError, match="replace the translator with a classifier"):
        check_entry_plan([classifier], repository, ExportOptions(tensorrt="off"))
