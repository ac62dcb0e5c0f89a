"""A refused entry that is a symbolic link (the repository linking entries kept elsewhere) leaves the
repository and the staging area: the link is removed, never what it points to."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from export.repository import remove_entry, staging_area, sweep_leftovers


def _linked_entry(tmp_path: Path) -> tuple[Path, Path]:
    repository, stored = tmp_path / "repo", tmp_path / "store" / "m_int8"
    repository.mkdir()
    stored.mkdir(parents=True)
    (stored / "kiln.json").write_text(json.dumps({"kiln_format": 1, "name": "m_int8"}), encoding="utf-8")
    (stored / "config.pbtxt").write_text('name: "m_int8"\n', encoding="utf-8")
    os.symlink(stored, repository / "m_int8")
    return repository, stored


def test_a_linked_entry_is_removed_as_a_link_leaving_no_staging_leftover(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the link was moved into the staging area and left there (rmtree refuses a link; its error was
    # ignored): every later export of the entry then warned "removed .m_int8.tmp-..., left by a killed
    # export" without removing it, and the staging area was never tidied away
    repository, stored = _linked_entry(tmp_path)
    assert remove_entry(repository, "m_int8")
    area = staging_area(repository)
    assert not (repository / "m_int8").exists() and not (repository / "m_int8").is_symlink()
    assert not area.exists() or list(area.iterdir()) == []
    assert sorted(p.name for p in stored.iterdir()) == ["config.pbtxt", "kiln.json"]  # the target kept
    with caplog.at_level(logging.WARNING, logger="export.repository"):
        assert sweep_leftovers(repository, "m_int8") == []
    assert "left by a killed export" not in caplog.text
