"""Re-exporting an entry whose model.py Python imported (Triton's python backend on a writable
repository, or a user's own test of a translator's model.py) is not refused.

The import writes ``1/__pycache__/model.cpython-*.pyc`` (and one beside each beam search module), which
kiln.json does not list: export refused the entry as "holding files export did not write (a version
added by hand?)" and asked the user to move Python's bytecode cache away."""

from __future__ import annotations

import py_compile
from pathlib import Path

import pytest

from export.repository import RepositoryError, remove_entry, write_entry


def _fill_saying(text: str):
    def fill(directory: Path) -> dict:
        (directory / "1" / "serving").mkdir(parents=True)
        (directory / "1" / "model.py").write_text(f"TEXT = {text!r}\n", encoding="utf-8")
        (directory / "1" / "serving" / "__init__.py").write_text("", encoding="utf-8")
        (directory / "config.pbtxt").write_text('name: "m"\nbackend: "python"\n', encoding="utf-8")
        return {"task": "translate"}

    return fill


def _imported(entry: Path) -> None:
    """What importing the entry's modules leaves: a ``__pycache__`` beside each."""
    for module in (entry / "1" / "model.py", entry / "1" / "serving" / "__init__.py"):
        py_compile.compile(str(module), doraise=True)
    assert list(entry.rglob("__pycache__/*.pyc")), "no bytecode written"


def test_an_entry_holding_python_s_bytecode_cache_is_exported_again(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    _imported(write_entry(repository, "m", _fill_saying("old")))
    entry = write_entry(repository, "m", _fill_saying("new"))
    assert (entry / "1" / "model.py").read_text(encoding="utf-8") == "TEXT = 'new'\n"


def test_an_entry_holding_python_s_bytecode_cache_can_be_removed(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    _imported(write_entry(repository, "m", _fill_saying("old")))
    assert remove_entry(repository, "m") and not (repository / "m").exists()


def test_a_hand_added_version_beside_the_cache_is_still_refused(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    entry = write_entry(repository, "m", _fill_saying("old"))
    _imported(entry)
    (entry / "2").mkdir()
    (entry / "2" / "model.py").write_text("kept by hand\n", encoding="utf-8")
    with pytest.raises(RepositoryError, match=r"\(2/model\.py: a version added by hand"):
        write_entry(repository, "m", _fill_saying("new"))
