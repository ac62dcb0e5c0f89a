"""The translator python model Kiln writes for real Triton reads its encoder and decoder as repository
entries, as the gateway does (``serving.decoding.translator_pool.step_entries`` looks the names up among
the repository's entries): a kiln.json ``translator.encoder`` / ``translator.decoder`` that is not a plain
entry name (absolute, with a ``/``, ``.`` or ``..``, empty, not a string) is refused naming kiln.json and
the field, where ``os.path.join(parent, name)`` read another directory's kiln.json and graph."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_flavourhunt_paths import translator_model  # noqa: F401 (fixture)


@pytest.mark.parametrize("field", ["encoder", "decoder"])
@pytest.mark.parametrize("name", ["ABSOLUTE", "../outside/STEP", "outside/STEP", ".", "..", "", 7])
def test_a_step_entry_that_is_not_an_entry_name_is_refused_naming_kiln_json(
    translator_model,  # noqa: F811
    transformer_repository: Path,
    tmp_path: Path,
    field: str,
    name: object,
) -> None:
    kiln = json.loads((transformer_repository / "transformer" / "kiln.json").read_text(encoding="utf-8"))
    step = kiln["translator"][field]
    outside = tmp_path / "outside"  # the step entry, outside the repository, that the model read before
    shutil.copytree(transformer_repository / step, outside / step)
    repository = tmp_path / "repository"
    entry = repository / "transformer"
    shutil.copytree(transformer_repository / "transformer", entry)
    for kept in kiln["translator"]["encoder"], kiln["translator"]["decoder"]:
        shutil.copytree(transformer_repository / kept, repository / kept)
    given = {"ABSOLUTE": str(outside / step)}.get(name, name)
    kiln["translator"][field] = given.replace("STEP", step) if isinstance(given, str) else given
    (entry / "kiln.json").write_text(json.dumps(kiln), encoding="utf-8")
    instance = translator_model.TritonPythonModel()
    with pytest.raises(ValueError, match=rf"kiln\.json: 'translator\.{field}' must name an entry of the"):
        instance.initialize({"model_repository": str(entry), "model_version": "1", "model_config": "{}"})


def test_plain_entry_names_still_load(translator_model, transformer_repository: Path) -> None:  # noqa: F811
    instance = translator_model.TritonPythonModel()
    entry = transformer_repository / "transformer"
    instance.initialize({"model_repository": str(entry), "model_version": "1", "model_config": "{}"})
    assert instance.steps == "in_process"
