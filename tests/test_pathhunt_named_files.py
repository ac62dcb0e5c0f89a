"""Files a repository names are read inside it, and export never leaves a linked entry behind.

A colleague's repository is semi-trusted: a config.pbtxt ``default_model_filename`` or a kiln.json
tokenizer field must not make the gateway read a file outside the repository without a word, and
re-exporting an entry that is a link to a directory elsewhere must neither write through the link
nor leave it in the staging area.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from export.repository import RepositoryError, staging_area, sweep_all_leftovers, version_dir, write_entry
from serving.decoding.translator import entry_source_tokenizer, translator_from_entry
from serving.execution.repository import Repository
from tests.repo_fixtures import IDENTITY_CONFIG, repository_client, write_identity_entries
from tests.test_scheduler import SPEC, FakeDecoder, fake_encoder


def test_an_absolute_default_model_filename_is_joined_under_the_version_as_triton_joins_it(tmp_path):
    # Python's ``/`` took the absolute name as is: the gateway served a graph from outside the
    # repository (READY, answering infers) where Triton's JoinPath looks under the version directory
    outside = write_identity_entries(tmp_path / "outside", ["secret"]) / "secret" / "1" / "model.onnx"
    root = write_identity_entries(tmp_path / "repo", ["m"])
    os.replace(root / "m" / "1" / "model.onnx", root / "m" / "1" / "other.onnx")  # the version's own graph
    config = IDENTITY_CONFIG.format(name="m") + f'default_model_filename: "{outside}"\n'
    (root / "m" / "config.pbtxt").write_text(config)
    entry = Repository(root).get("m")
    assert entry.model_file("1") == root / "m" / "1" / str(outside).lstrip("/")
    with repository_client(root) as client:
        answer = client.get("/v2/models/m/ready")
    assert answer.status_code == 400
    assert f"{root / 'm' / '1'}{outside}" in answer.json()["error"]  # the file it looked for, named


def test_a_default_model_filename_inside_the_version_is_still_served(tmp_path):
    root = write_identity_entries(tmp_path / "repo", ["m"])
    os.replace(root / "m" / "1" / "model.onnx", root / "m" / "1" / "graph.onnx")
    config = IDENTITY_CONFIG.format(name="m") + 'default_model_filename: "/graph.onnx"\n'
    (root / "m" / "config.pbtxt").write_text(config)
    assert Repository(root).get("m").model_file("1") == root / "m" / "1" / "graph.onnx"


def _translator_entry(root: Path, **fields: object) -> tuple[Path, dict]:
    """A ``t`` translate entry over the scripted step spec, its word-level tokenizers in its directory
    and a copy outside it (``root / "tok.json"``); ``fields`` go in its kiln.json ``translator`` block."""
    path = root / "repo" / "t"
    path.mkdir(parents=True)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate("abcdef")}}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = Whitespace()
    for file in ("source_tokenizer.json", "target_tokenizer.json"):
        tokenizer.save(str(path / file))
    tokenizer.save(str(root / "tok.json"))
    kiln = {"name": "t", "translator": {"step_spec": SPEC, **fields}}
    (path / "kiln.json").write_text(json.dumps(kiln))
    return path, kiln


@pytest.mark.parametrize("field", ["source_tokenizer", "target_tokenizer"])
@pytest.mark.parametrize("name", ["{root}/tok.json", "../../tok.json", "sub/../../../tok.json", 5, ""])
def test_a_tokenizer_named_outside_the_entry_is_refused_naming_the_file_and_field(tmp_path, field, name):
    # an absolute name or ``..`` loaded a tokenizer from outside the repository without a word, and a
    # number was "TypeError: unsupported operand type(s) for /", naming neither file nor field
    name = name.format(root=tmp_path) if isinstance(name, str) else name
    path, kiln = _translator_entry(tmp_path, **{field: name})
    with pytest.raises(ValueError) as refused:
        translator_from_entry(path, kiln, fake_encoder, FakeDecoder())
    assert str(path / "kiln.json") in str(refused.value)
    assert f"'translator.{field}' must name a file in the entry's directory" in str(refused.value)
    assert repr(name) in str(refused.value)
    if field == "source_tokenizer":  # the REST route's measure of texts: none, rather than the outside file
        assert entry_source_tokenizer(SimpleNamespace(kiln=kiln, path=path)) is None


def test_a_tokenizer_in_a_folder_of_the_entry_is_read(tmp_path):
    path, kiln = _translator_entry(tmp_path, source_tokenizer="tok/source.json")
    (path / "tok").mkdir()
    shutil.copy(path / "source_tokenizer.json", path / "tok" / "source.json")
    assert translator_from_entry(path, kiln, fake_encoder, FakeDecoder()).name == "t"
    assert entry_source_tokenizer(SimpleNamespace(kiln=kiln, path=path)) is not None


def _fill(tmp: Path) -> dict:
    (version_dir(tmp) / "model.onnx").write_bytes(b"graph")
    (tmp / "config.pbtxt").write_text('name: "m"\n')
    return {"task": "classify"}


def test_exporting_over_a_linked_entry_replaces_the_link_and_leaves_nothing_behind(tmp_path, caplog):
    # the exchanged-out link was handed to rmtree, which refuses links (its error ignored): it stayed
    # in the staging area for good, and every later export warned it "removed" it, left by a killed
    # export, while it stayed
    repository = tmp_path / "repo"
    write_entry(repository, "m", _fill)
    stored = tmp_path / "store" / "m"
    stored.parent.mkdir()
    os.replace(repository / "m", stored)
    os.symlink(stored, repository / "m")
    before = {p.name: p.read_bytes() for p in stored.rglob("*") if p.is_file()}
    with caplog.at_level(logging.WARNING, logger="export.repository"):
        write_entry(repository, "m", _fill)
    assert not (repository / "m").is_symlink() and (repository / "m" / "kiln.json").is_file()
    assert f"{repository / 'm'} was a link to {stored}" in caplog.text
    assert {p.name: p.read_bytes() for p in stored.rglob("*") if p.is_file()} == before  # not written through
    area = staging_area(repository)
    assert not area.exists() or list(area.iterdir()) == []
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="export.repository"):
        assert sweep_all_leftovers(repository) == []
    assert "left by a killed export" not in caplog.text


def _labelled_entry(tmp_path: Path) -> Path:
    """A repository with entries ``good`` and ``m``, whose output's label_filename is labels.txt."""
    root = write_identity_entries(tmp_path / "repo", ["good", "m"])
    config = IDENTITY_CONFIG.format(name="m").replace(
        'name: "y" data_type: TYPE_FP32 dims: [ 2 ]',
        'name: "y" data_type: TYPE_FP32 dims: [ 2 ] label_filename: "labels.txt"',
    )
    assert config.count("label_filename") == 1
    (root / "m" / "config.pbtxt").write_text(config)
    return root


def test_a_label_file_that_is_a_pipe_fails_its_entry_instead_of_hanging_the_start(tmp_path):
    # read_bytes() on a named pipe waited for a writer for good: the gateway never started (and one
    # naming a device, ``../../dev/zero``, read until memory ran out)
    root = _labelled_entry(tmp_path)
    os.mkfifo(root / "m" / "labels.txt")
    loaded: list[Repository] = []
    reader = threading.Thread(target=lambda: loaded.append(Repository(root)), daemon=True)
    reader.start()
    reader.join(5)
    if not loaded:  # unblock the hung reader, so the thread ends with the test
        with open(os.open(root / "m" / "labels.txt", os.O_WRONLY | os.O_NONBLOCK), "wb"):
            pass
        reader.join(5)
        pytest.fail("reading the repository hung on a label file that is a named pipe")
    assert list(loaded[0].entries) == ["good"]
    assert loaded[0].errors["m"] == (
        f"label file {str(root / 'm' / 'labels.txt')!r} for output 'y' cannot be read: "
        "not a regular file (a pipe, a device or a socket)"
    )


def test_a_label_file_that_is_a_directory_or_a_link_to_a_file_reads_as_before(tmp_path):
    root = _labelled_entry(tmp_path)
    (root / "m" / "labels.txt").mkdir()
    assert "for output 'y' cannot be read: Is a directory" in Repository(root).errors["m"]
    (root / "m" / "labels.txt").rmdir()
    (tmp_path / "classes.txt").write_text("a\nb\n")
    os.symlink(tmp_path / "classes.txt", root / "m" / "labels.txt")
    assert Repository(root).get("m").labels == {"y": ["a", "b"]}


def test_a_version_linked_into_an_entry_by_hand_is_not_dropped_by_an_export(tmp_path):
    # a version directory that is a link (served: the gateway and Triton follow it) was neither kept
    # (entry_versions passes links over) nor counted as a file export did not write (rglob does not
    # enter a linked directory): replacing the entry dropped it without a word
    repository = tmp_path / "repo"
    write_entry(repository, "m", _fill)
    stored = tmp_path / "store" / "2"
    stored.mkdir(parents=True)
    (stored / "model.onnx").write_bytes(b"graph 2")
    os.symlink(stored, repository / "m" / "2")
    with pytest.raises(
        RepositoryError, match=r"holds files export did not write \(2: a version added by hand"
    ):
        write_entry(repository, "m", _fill)
    assert (repository / "m" / "2").is_symlink()
    assert (stored / "model.onnx").read_bytes() == b"graph 2"
