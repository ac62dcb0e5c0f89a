"""A version added by hand beside export's version 1 is never deleted by the next export of the entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.repository import RepositoryError, remove_entry, write_entry


def _fill_saying(text: str):
    def fill(directory: Path) -> dict:
        (directory / "1").mkdir()
        (directory / "1" / "model.onnx").write_text(text, encoding="utf-8")
        (directory / "config.pbtxt").write_text('name: "m"\n', encoding="utf-8")
        return {"task": "classify"}

    return fill


def _with_version_two(tmp_path: Path) -> Path:
    repository = tmp_path / "repo"
    entry = write_entry(repository, "m", _fill_saying("old"))
    (entry / "2").mkdir()
    (entry / "2" / "model.onnx").write_text("kept by hand", encoding="utf-8")
    return repository


def test_rewriting_an_entry_holding_a_hand_added_version_is_refused_and_keeps_it(tmp_path: Path) -> None:
    """The retrained model's export replaced the entry whole: version 2 was gone without a word."""
    repository = _with_version_two(tmp_path)
    with pytest.raises(RepositoryError, match=r"2/model\.onnx.*version added by hand"):
        write_entry(repository, "m", _fill_saying("new"))
    assert (repository / "m" / "2" / "model.onnx").read_text(encoding="utf-8") == "kept by hand"
    assert (repository / "m" / "1" / "model.onnx").read_text(encoding="utf-8") == "old"


def test_removing_an_entry_holding_a_hand_added_version_is_refused(tmp_path: Path) -> None:
    repository = _with_version_two(tmp_path)
    with pytest.raises(RepositoryError, match="export did not write"):
        remove_entry(repository, "m")
    assert (repository / "m" / "2" / "model.onnx").is_file()


def test_an_entry_holding_only_what_export_wrote_is_still_replaced(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    write_entry(repository, "m", _fill_saying("old"))
    entry = write_entry(repository, "m", _fill_saying("new"))
    assert (entry / "1" / "model.onnx").read_text(encoding="utf-8") == "new"
