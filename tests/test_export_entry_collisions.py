"""Entry names derived from a checkpoint's name (``foo`` writes ``foo_encoder``, ``foo_int8``...) never let
one model's export overwrite another model's entry, in one run or in the repository: refused before any
work, naming both models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from export.results import ExportOptions
from tests.repo_fixtures import _tiny_checkpoint
from tests.test_export_translate import SENTENCES, _translator_checkpoint


def _translator(path: Path) -> Path:
    """A tiny GRU translator checkpoint at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return _translator_checkpoint("gru_attention", path.parent).rename(path)


def _classifier(path: Path) -> Path:
    return _tiny_checkpoint(path, "lenet", seed=0)


def _no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any export work (a task's exporter starting) fails the test."""
    import export.pipeline

    def no_work(task: str) -> Any:
        raise AssertionError(f"the {task} export started")

    monkeypatch.setattr(export.pipeline, "_exporter", no_work)


def _fail(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    from export.__main__ import main

    assert main(argv) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if "export failed" in line]
    assert len(lines) == 1, lines
    return lines[0]


def _classifier_refused(
    path: Path, repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, str]:
    """A classifier checkpoint at ``path`` exported into ``repo`` by the CLI, which must refuse it before
    any work: (the checkpoint, the one line saying why)."""
    _no_work(monkeypatch)
    ckpt = _classifier(path)
    return ckpt, _fail([str(ckpt), "--repository", str(repo), "--tensorrt", "off"], capsys)


def _task(entry: Path) -> str:
    return json.loads((entry / "kiln.json").read_text())["task"]


@pytest.mark.parametrize(
    ("first", "second", "precisions", "entry"),
    [
        (("foo", _translator), ("foo_encoder", _classifier), "fp32", "foo_encoder"),
        (("foo", _translator), ("foo_decoder_int8", _classifier), "fp32,int8", "foo_decoder_int8"),
        (("foo", _classifier), ("foo_int8", _classifier), "fp32,int8", "foo_int8"),
        (("foo", _classifier), ("foo_fp16", _classifier), "fp32,fp16", "foo_fp16"),
    ],
    ids=["translator encoder", "translator int8 decoder", "classifier int8", "classifier fp16"],
)
def test_a_checkpoint_named_like_an_entry_another_one_derives_in_the_run_is_refused_before_any_work(
    tmp_path, capsys, monkeypatch, first, second, precisions, entry
):
    _no_work(monkeypatch)
    (a, make_a), (b, make_b) = first, second
    path_a, path_b = make_a(tmp_path / "ckpts" / f"{a}.pt"), make_b(tmp_path / "ckpts" / f"{b}.pt")
    repo = tmp_path / "repo"
    argv = [str(tmp_path / "ckpts"), "--repository", str(repo), "--precisions", precisions]
    line = _fail([*argv, "--tensorrt", "off"], capsys)
    assert line.startswith(f"export failed: {path_a} (model '{a}': entries '{a}', ")
    assert f" and {path_b} (model '{b}': entries '{b}'" in line
    assert f"would both write entry '{entry}': rename one, or export them into separate repositories" in line
    assert not repo.exists()  # made by the export, nothing written: removed again


def test_checkpoints_whose_entries_do_not_meet_this_run_are_not_refused(tmp_path):
    from export.pipeline import check_entry_plan

    ckpts = [_classifier(tmp_path / "foo.pt"), _classifier(tmp_path / "foo_int8.pt")]
    check_entry_plan(ckpts, tmp_path / "repo", ExportOptions(precisions=("fp32",), tensorrt="off"))


@pytest.fixture(scope="module")
def translator_repository(tmp_path_factory) -> tuple[Path, Path]:
    """(repository, checkpoint): translator ``foo`` exported; nothing may change it."""
    from export.pipeline import export_checkpoint

    root = tmp_path_factory.mktemp("translator")
    ckpt = _translator(root / "ckpts" / "foo.pt")
    export_checkpoint(ckpt, root / "repo", validation=SENTENCES, tensorrt="off")
    return root / "repo", ckpt


def test_a_checkpoint_named_like_another_models_entry_in_the_repository_is_refused_before_any_work(
    tmp_path, capsys, monkeypatch, translator_repository
):
    repo, translator = translator_repository
    ckpt, line = _classifier_refused(tmp_path / "foo_encoder.pt", repo, capsys, monkeypatch)
    assert line == (
        f"export failed: entry 'foo_encoder' in {repo} belongs to model 'foo' (from {translator}); "
        f"exporting {ckpt} as model 'foo_encoder' would overwrite it: rename the checkpoint, remove "
        "that entry, or export into another repository"
    )
    assert _task(repo / "foo_encoder") == "translate_encoder"


def test_the_library_refuses_to_overwrite_another_models_entry_before_any_work_too(
    tmp_path, monkeypatch, translator_repository
):
    from export.pipeline import export_checkpoint
    from export.repository import RepositoryError

    repo, _ = translator_repository
    _no_work(monkeypatch)
    ckpt = _classifier(tmp_path / "foo_decoder.pt")
    with pytest.raises(RepositoryError, match="entry 'foo_decoder' in .* belongs to model 'foo'"):
        export_checkpoint(ckpt, repo, tensorrt="off")
    assert _task(repo / "foo_decoder") == "translate_decoder"


def test_a_model_whose_derived_entry_another_model_wrote_is_refused_before_overwriting_it(
    tmp_path, capsys, monkeypatch
):
    from export.pipeline import export_checkpoint

    repo = tmp_path / "repo"
    classifier = _classifier(tmp_path / "classifiers" / "foo_encoder.pt")
    export_checkpoint(classifier, repo, tensorrt="off")
    _no_work(monkeypatch)
    translator = _translator(tmp_path / "translators" / "foo.pt")
    line = _fail([str(translator), "--repository", str(repo)], capsys)
    assert line.startswith(
        f"export failed: entry 'foo_encoder' in {repo} belongs to model 'foo_encoder' (from {classifier}); "
        f"exporting {translator} as model 'foo' would overwrite it"
    )
    assert _task(repo / "foo_encoder") == "classify"


def test_a_model_re_exported_from_a_moved_checkpoint_still_owns_its_entries(tmp_path, translator_repository):
    from export.pipeline import check_entry_plan

    repo, translator = translator_repository
    moved = shutil.copy(translator, tmp_path / "foo.pt")
    check_entry_plan([Path(moved)], repo, ExportOptions(precisions=("fp32", "int8"), tensorrt="off"))


def test_a_foreign_directory_at_a_derived_entry_name_is_refused_before_any_work(
    tmp_path, capsys, monkeypatch
):
    _no_work(monkeypatch)
    repo = tmp_path / "repo"
    (repo / "foo_decoder").mkdir(parents=True)
    translator = _translator(tmp_path / "ckpts" / "foo.pt")
    line = _fail([str(translator), "--repository", str(repo)], capsys)
    assert line == (
        f"export failed: {repo / 'foo_decoder'} exists and is not a Kiln export (no valid kiln.json); "
        "refusing to overwrite it"
    )


def test_a_named_export_rewrites_its_entry_from_another_checkpoint_file(tmp_path):
    """``export_checkpoint(..., name="digits")`` from a retrained ``lenet_retrained.pt`` was refused: the
    entry's owner was read from its source file's name ('lenet'). kiln.json records the model name now."""
    from export.pipeline import export_checkpoint
    from tests.classifier_exports import tiny_images, write_checkpoint

    repo = tmp_path / "repo"
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    options = {"validation": tiny_images(), "tensorrt": "off", "precisions": ("fp32",)}
    export_checkpoint(write_checkpoint(tmp_path / "v1", "lenet"), repo, name="digits", **options)
    second = write_checkpoint(tmp_path / "v2", "lenet").rename(tmp_path / "v2" / "lenet_retrained.pt")
    export_checkpoint(second, repo, name="digits", **options)
    source = json.loads((repo / "digits" / "kiln.json").read_text())["source_checkpoint"]
    assert source["path"] == str(second) and source["model"] == "digits"


def test_a_checkpoint_named_like_another_models_refused_entry_is_refused_and_the_record_kept(
    tmp_path, capsys, monkeypatch
):
    """Translator ``foo``'s int8 twin refused by its gate leaves no ``foo_int8`` entry, only its record
    in ``.kiln_refused.json``: a classifier ``foo_int8.pt`` wrote that entry and dropped the record (the
    next ``foo`` export then met a stranger's entry in its slot). The record claims the name as an entry
    does, so the classifier is refused before any work and the record stays."""
    from export.repository import read_refusal, remember_refusal

    repo = tmp_path / "repo"
    repo.mkdir()
    translator = tmp_path / "translators" / "foo.pt"
    source = {"path": str(translator), "sha256": "0" * 64, "model": "foo"}
    remember_refusal(repo, "foo_int8", {"source_checkpoint": source, "precision": "int8"})
    ckpt, line = _classifier_refused(tmp_path / "foo_int8.pt", repo, capsys, monkeypatch)
    assert line == (
        f"export failed: entry 'foo_int8' in {repo} is model 'foo''s (from {translator}), refused by its "
        f"gate (recorded in {repo / '.kiln_refused.json'}); exporting {ckpt} as model 'foo_int8' would "
        "take its name: rename the checkpoint, or export into another repository"
    )
    assert read_refusal(repo, "foo_int8")["source_checkpoint"]["model"] == "foo"
    assert not (repo / "foo_int8").exists()


def test_a_translators_int8_twins_refused_by_its_real_gate_keep_their_names_from_a_classifier(
    tmp_path, capsys, monkeypatch
):
    """End to end, with the record the gate itself writes: translator ``foo``'s int8 twins refused
    (1 % of sentences changed), a classifier ``foo_int8.pt`` is refused before any work, and ``foo``'s
    next export still finds its refusals (up to date, not re-gated, no stranger in its slot)."""
    import dataclasses

    from export.pipeline import export_checkpoint
    from export.repository import REFUSALS

    def drifted(gate: Any) -> Any:
        return dataclasses.replace(gate, agreement=0.99)

    repo = tmp_path / "repo"
    translator = _translator(tmp_path / "translators" / "foo.pt")
    options = {"validation": SENTENCES, "tensorrt": "off", "precisions": ("fp32", "int8")}
    first = export_checkpoint(translator, repo, accuracy_hook=drifted, **options)
    int8 = ["foo_encoder_int8", "foo_decoder_int8", "foo_int8"]
    assert [r.status for r in first if r.entry in int8] == ["rejected"] * 3
    records = (repo / REFUSALS).read_text()
    with monkeypatch.context() as patched:
        _no_work(patched)
        ckpt = _classifier(tmp_path / "classifiers" / "foo_int8.pt")
        argv = [str(ckpt), "--repository", str(repo), "--tensorrt", "off", "--precisions", "fp32,int8"]
        line = _fail(argv, capsys)
    assert line.startswith(
        f"export failed: entry 'foo_int8' in {repo} is model 'foo''s (from {translator}), "
    )
    assert (repo / REFUSALS).read_text() == records and not (repo / "foo_int8").exists()
    again = export_checkpoint(translator, repo, accuracy_hook=drifted, **options)
    assert [r.status for r in again] == ["up to date"] * 6
    assert all("refused by its gate earlier" in r.message for r in again if r.entry in int8)
