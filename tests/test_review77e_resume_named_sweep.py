"""A run named ``<x>.resume`` swept, as its own checkpoint's leftover, the ``.<x>.resume.pt.<hex>.tmp``
that a running run named ``<x>`` was writing for its resume state (the two share that file name): the
other run's save then failed at its rename. It is kept while run ``<x>``'s lock file is there, as the
reverse case was already; swept once run ``<x>`` is gone."""

from __future__ import annotations

from pathlib import Path

from training.checkpoint import _new_temp_file
from training.run_lock import run_lock


def test_a_run_named_x_resume_keeps_what_run_x_may_be_writing(tmp_path: Path) -> None:
    with run_lock(tmp_path, "run", writer=True):
        theirs = Path(_new_temp_file(tmp_path / "run.resume.pt"))  # run "run" saving its resume state
        with run_lock(tmp_path, "run.resume", writer=True):
            assert theirs.exists()
    with run_lock(tmp_path, "run.resume", writer=True):  # run "run" gone: a leftover, swept
        assert not theirs.exists()


def test_in_a_folder_of_the_name_too(tmp_path: Path) -> None:
    (tmp_path / "team").mkdir()
    with run_lock(tmp_path, "team/run", writer=True):
        theirs = Path(_new_temp_file(tmp_path / "team" / "run.resume.pt"))
        with run_lock(tmp_path, "team/run.resume", writer=True):
            assert theirs.exists()
