"""A checkpoint save killed before its rename (``kill -9``, the OOM killer) left a hidden
``.<name>.pt.<hex>.tmp`` or ``.<name>.resume.pt.<hex>.tmp`` as large as a checkpoint that nothing ever
removed; the next run under that name, holding its lock, now removes them and says so, and touches no
other run's files."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from training.checkpoint import _new_temp_file
from training.run_lock import lock_path, run_lock


def _leftover(path: Path, size: int = 1 << 20) -> Path:
    """A temporary file named as save_checkpoint names the one it writes before its rename."""
    tmp = Path(_new_temp_file(path))
    tmp.write_bytes(b"\0" * size)
    return tmp


def test_a_run_removes_what_a_killed_save_of_its_name_left(tmp_path: Path, caplog) -> None:
    ours = [_leftover(tmp_path / "run.pt"), _leftover(tmp_path / "run.resume.pt")]
    others = [
        _leftover(tmp_path / "other.pt"),  # another run's
        _leftover(tmp_path / "run.pt.bak"),  # not a checkpoint this run writes
        tmp_path / ".run.pt.notahex.tmp",  # not save_checkpoint's name
        tmp_path / "run.pt",  # the checkpoint itself
    ]
    for path in others[2:]:
        path.write_bytes(b"x")
    with caplog.at_level(logging.INFO, logger="training.run_lock"), run_lock(tmp_path, "run", writer=True):
        assert not any(path.exists() for path in ours)
        assert all(path.exists() for path in others)
    assert "removed 2 temporary files (2.0 MiB) that an interrupted run under --name run" in caplog.text


def test_a_run_in_a_folder_of_its_name_sweeps_there(tmp_path: Path) -> None:
    (tmp_path / "team").mkdir()
    left = _leftover(tmp_path / "team" / "run.resume.pt")
    with run_lock(tmp_path, "team/run", writer=True):
        assert not left.exists()


def test_what_a_run_named_name_resume_may_be_writing_is_kept(tmp_path: Path) -> None:
    # ".run.resume.pt.<hex>.tmp" is also the checkpoint a run named "run.resume" writes: kept while that
    # run's lock file is there, swept once it is not
    with run_lock(tmp_path, "run.resume", writer=True):
        theirs = _leftover(tmp_path / "run.resume.pt")  # that run saving its checkpoint
        assert lock_path(tmp_path, "run.resume").exists()
        with run_lock(tmp_path, "run", writer=True):
            assert theirs.exists()
    with run_lock(tmp_path, "run", writer=True):
        assert not theirs.exists()


def test_nothing_is_swept_without_the_lock(tmp_path: Path) -> None:
    # other ranks take no lock: they never remove what the writer may be writing
    left = _leftover(tmp_path / "run.pt")
    with run_lock(tmp_path, "run", writer=False):
        assert left.exists()
    assert os.path.getsize(left) == 1 << 20
