"""The python flavour's models read only files inside their entry, as the gateway does: a translator's
kiln.json tokenizer name that is absolute or climbs with ``..`` is refused naming kiln.json and the
field (``serving.decoding.translator.tokenizer_path``), and an absolute ``default_model_filename`` is
joined under the version directory (``RepositoryEntry.model_file``, as Triton joins it), where
``os.path.join`` read a file outside the repository."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from serving.triton.flavour import derive_python_flavour
from tests.test_byo_g_model_directory import _directory_model
from tests.test_review75j_flavour_model_directory import onnx_model  # noqa: F401 (fixture)
from tests.test_triton_audit import _TensorRequest
from tests.test_triton_flavour_hunt import initialized_model
from tests.test_triton_translator_model import stand_in_pb_utils


def _absolute_model_file(root: Path) -> Path:
    repository = _directory_model(root)
    config = repository / "scaled" / "config.pbtxt"
    config.write_text(config.read_text() + 'default_model_filename: "/model.onnx"\n')
    return repository


def test_an_absolute_model_file_is_the_version_directorys_in_the_flavour(onnx_model, tmp_path: Path) -> None:  # noqa: F811
    repository = _absolute_model_file(tmp_path / "repo")
    assert derive_python_flavour(repository, tmp_path / "flavour").wrapped == ["scaled"]
    instance = initialized_model(onnx_model, repository / "scaled")
    (answer,) = instance.execute([_TensorRequest(x=np.ones((1, 3), np.float32))])
    assert answer.error is None
    assert dict(answer.outputs)["y"].tolist() == [[2.0, 3.0, 4.0]]


@pytest.fixture
def translator_model(monkeypatch: pytest.MonkeyPatch):
    stand_in_pb_utils(monkeypatch, lambda request, name: None)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the model puts its own directory first
    monkeypatch.delitem(sys.modules, "serving.triton.translator_model", raising=False)
    yield importlib.import_module("serving.triton.translator_model")
    sys.modules.pop("serving.triton.translator_model", None)


@pytest.mark.parametrize("field", ["source_tokenizer", "target_tokenizer"])
@pytest.mark.parametrize("name", ["ABSOLUTE", "../outside.json", "tok/../../outside.json", 7])
def test_a_tokenizer_named_outside_the_entry_is_refused_naming_kiln_json(
    translator_model, transformer_repository: Path, tmp_path: Path, field: str, name: object
) -> None:
    exported = transformer_repository / "transformer"  # the suite's tiny translator, exported once
    kiln = json.loads((exported / "kiln.json").read_text(encoding="utf-8"))
    outside = tmp_path / "outside.json"  # a tokenizer outside the entry, that the model read before
    outside.write_bytes((exported / "source_tokenizer.json").read_bytes())
    entry = tmp_path / "entry"
    entry.mkdir()
    for tokenizer in ("source_tokenizer.json", "target_tokenizer.json"):
        (entry / tokenizer).write_bytes(outside.read_bytes())
    kiln["translator"][field] = str(outside) if name == "ABSOLUTE" else name
    (entry / "kiln.json").write_text(json.dumps(kiln), encoding="utf-8")
    instance = translator_model.TritonPythonModel()
    with pytest.raises(ValueError, match=rf"kiln\.json: 'translator\.{field}' must name a file in the entry"):
        instance.initialize({"model_repository": str(entry), "model_version": "1", "model_config": "{}"})
