"""A refused entry leaves the repository whole: never a half-deleted directory a server or export sees."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from export import repository as repo_mod
from export.repository import remove_entry, write_entry

REAL_RMTREE = shutil.rmtree  # the tests patch the module's attribute, which every caller shares


def _fill(directory: Path) -> dict:
    (directory / "1").mkdir()
    (directory / "1" / "model.onnx").write_bytes(b"graph")
    (directory / "config.pbtxt").write_text('name: "m_int8"\n', encoding="utf-8")
    return {"task": "classify"}


def _partial_rmtree(path, ignore_errors=False, **kwargs):
    """shutil.rmtree that deletes the entry's top-level files, then fails on its version directory, as
    it does on NFS when a server holds ``1/model.onnx`` open (a silly-renamed ``.nfs*`` file stays)."""
    for child in Path(path).iterdir():
        if child.is_file():
            child.unlink()
    if not ignore_errors:
        raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), str(Path(path) / "1"))


def test_a_removal_that_fails_partway_leaves_no_foreign_directory_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = tmp_path / "repo"
    write_entry(repository, "m_int8", _fill)
    monkeypatch.setattr(repo_mod.shutil, "rmtree", _partial_rmtree)
    assert remove_entry(repository, "m_int8")
    assert not (repository / "m_int8").exists()
    monkeypatch.setattr(repo_mod.shutil, "rmtree", REAL_RMTREE)
    write_entry(repository, "m_int8", _fill)  # was: "exists and is not a Kiln export; refusing"
    assert (repository / "m_int8" / "kiln.json").is_file()


def test_the_entry_is_out_of_the_repository_before_its_files_are_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Triton or gateway loading while the entry is deleted found config.pbtxt without its model."""
    repository = tmp_path / "repo"
    write_entry(repository, "m_int8", _fill)
    seen: list[bool] = []

    def recording(path, *args, **kwargs):
        seen.append((repository / "m_int8").exists())
        return REAL_RMTREE(path, *args, **kwargs)

    monkeypatch.setattr(repo_mod.shutil, "rmtree", recording)
    remove_entry(repository, "m_int8")
    assert seen and not any(seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # nothing left beside it either
