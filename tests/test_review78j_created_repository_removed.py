"""A refused export removes again the ``--repository`` directories it created, and never one that
existed before (``removed_if_left_empty``). A relative path through ``..`` fooled both halves: with
``x/../repo``, ``x`` was made and left behind; with ``x/../../keep/repo``, the existing (empty)
``keep`` did not "exist" while ``x`` did not, and was removed with the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.__main__ import removed_if_left_empty
from export.repository import RepositoryError, check_repository


def _refused_run(repository: Path) -> None:
    with pytest.raises(RepositoryError), removed_if_left_empty(repository):
        check_repository(repository)  # makes it, and its missing parents
        raise RepositoryError("refused before anything was written")


def test_a_directory_made_on_the_way_through_dot_dot_is_removed_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _refused_run(Path("x/../repo"))
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # was ['x']


def test_an_existing_directory_named_through_dot_dot_is_never_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "keep").mkdir()  # the user's, empty
    monkeypatch.chdir(tmp_path / "work")
    _refused_run(Path("x/../../keep/repo"))
    assert (tmp_path / "keep").is_dir()  # was removed
    assert not (tmp_path / "keep" / "repo").exists()


def test_a_link_loop_on_the_way_is_a_refusal_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    _refused_run(tmp_path / "loop" / "new" / "repo")
    assert (tmp_path / "loop").is_symlink()
