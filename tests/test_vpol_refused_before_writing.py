"""``python -m export`` refuses what it can know to be refused before it writes anything: a version
policy that would serve none of an entry's versions (a new ``_fp16`` twin of version 2 with
``specific:1``), a later checkpoint of the run whose version, name or file is refused, and a
``--repository`` it created is not left behind empty. Each was found out only after the entries
before it had been written (docs/kiln-json.md, "Versions")."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.__main__ import main
from export.pipeline import version_to_write
from export.repository import RepositoryError, entry_versions, write_entry, writing_version
from export.results import ExportOptions
from tests.repo_fixtures import MAX_BATCH, _tiny_checkpoint
from tests.test_hb2_export_versions import _fill

FLAGS = ["--tensorrt", "off", "--max-batch-size", str(MAX_BATCH), "--no-progress"]


def _refused(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main([*argv, *FLAGS]) == 1
    return " ".join(capsys.readouterr().err.split())


def _tree(repository: Path) -> list[str]:
    return sorted(p.relative_to(repository).as_posix() for p in repository.rglob("*"))


def _lenet_v1(repository: Path) -> Path:
    """``repository`` holding entry ``lenet``, version 1, exported from another checkpoint (no export
    is run: the refusals come before any)."""
    inner = _fill("lenet v1", sha="one")

    def fill(directory: Path) -> dict:
        return {**inner(directory), "source_checkpoint": {"path": "old/lenet.pt", "sha256": "one"}}

    write_entry(repository, "lenet", fill)
    return repository


def test_a_policy_serving_none_of_a_new_twin_s_versions_is_refused_with_the_version_to_write(
    tmp_path: Path,
) -> None:
    """``specific:1`` stages version 2 of an entry holding 1 (documented), but a twin the run creates
    would hold 2 alone: refused by ``version_to_write``, before any work, not as that twin is written."""
    repository = tmp_path / "repo"
    write_entry(repository, "m", _fill("v1", sha="one"))
    options = ExportOptions(version="2", version_policy="specific:1")
    assert version_to_write(repository, ("m",), options, Path("m.pt"), "two") == "2"  # staged, as ever
    with pytest.raises(RepositoryError, match=r"m_int8: version_policy specific \[1\] serves none.*\(2\)"):
        version_to_write(repository, ("m", "m_int8"), options, Path("m.pt"), "two")
    with writing_version("1", "specific:1"):  # the entry's own policy, kept where none is given
        write_entry(repository, "k", _fill("v1", sha="one"))
    kept = ExportOptions(version="2")  # k keeps specific:1, serving 1; a new twin gets latest:1
    assert version_to_write(repository, ("k", "k_int8"), kept, Path("k.pt"), "two") == "2"


def test_the_export_writes_nothing_when_a_new_twin_would_serve_no_version(tmp_path, capsys) -> None:
    repository = _lenet_v1(tmp_path / "repo")
    before = _tree(repository)
    retrained = _tiny_checkpoint(tmp_path / "retrained" / "lenet.pt", "lenet", seed=7)
    flags = ["--version", "2", "--version-policy", "specific:1", "--precisions", "fp32,fp16"]
    err = _refused(capsys, [str(retrained), "--repository", str(repository), *flags])
    assert "lenet_fp16: version_policy specific [1] serves none of its versions (2)" in err
    assert "--precisions" in err and "latest:N or all" in err
    assert _tree(repository) == before  # before: lenet/2 written, then the refusal
    assert entry_versions(repository / "lenet") == ["1"]


def test_a_later_checkpoint_s_version_conflict_is_refused_before_the_earlier_ones_are_written(
    tmp_path, capsys
) -> None:
    repository = _lenet_v1(tmp_path / "repo")
    before = _tree(repository)
    new = tmp_path / "v2"
    alpha = _tiny_checkpoint(new / "alpha.pt", "lenet", seed=3)  # sorted first: written first, before
    retrained = _tiny_checkpoint(new / "lenet.pt", "lenet", seed=7)
    err = _refused(capsys, [str(alpha), str(retrained), "--repository", str(repository), "--version", "1"])
    assert "version 1 of entry 'lenet'" in err and "--replace-version" in err
    assert _tree(repository) == before  # before: alpha/1 written, then lenet refused


@pytest.mark.parametrize("later", ["zeta.pt", "_hidden.pt"])
def test_a_later_file_that_cannot_be_exported_is_refused_before_the_earlier_ones_are_written(
    tmp_path, capsys, later
) -> None:
    """A file that is no checkpoint, or whose name gives no entry name, was refused at its turn."""
    repository = tmp_path / "repo"
    alpha = _tiny_checkpoint(tmp_path / "ckpts" / "alpha.pt", "lenet", seed=3)
    (tmp_path / "ckpts" / later).write_bytes(b"not a checkpoint")
    err = _refused(capsys, [str(alpha), str(tmp_path / "ckpts" / later), "--repository", str(repository)])
    assert later in err
    assert not repository.exists()  # nothing written, and the repository it made taken away again


def test_a_repository_the_export_made_is_removed_when_it_fails_having_written_nothing(
    tmp_path, capsys
) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    new = tmp_path / "new" / "repo"
    assert "not a PyTorch checkpoint" in _refused(capsys, [str(bad), "--repository", str(new)])
    assert not (tmp_path / "new").exists()  # before: an empty new/repo/ left behind
    kept = tmp_path / "kept"
    kept.mkdir()  # there before the export: kept, empty or not
    _refused(capsys, [str(bad), "--repository", str(kept)])
    assert kept.is_dir()
    _refused(capsys, [str(bad), "--repository", str(kept / "inner")])
    assert kept.is_dir() and not (kept / "inner").exists()
