"""``python -m serving.triton`` starts where another user's launcher (running or killed) has its work
directory in the shared /tmp: that directory is private to its user (0700), and the sweep of killed
launchers' directories (``sweep_workdirs``) looked inside it for the file that keeps one for reading,
so every launch by any other user of the machine ended in a PermissionError traceback (reproduced with
two users)."""

from __future__ import annotations

from pathlib import Path

from serving import process_tree
from serving.triton import __main__ as launcher


def test_another_users_private_work_directory_is_left_quietly(tmp_path: Path, monkeypatch) -> None:
    foreign = process_tree.make_held_dir(launcher.WORKDIR_PREFIX, tmp_path)
    process_tree.release(foreign)  # its launcher was killed: only its user may remove it
    dead = process_tree.make_held_dir(launcher.WORKDIR_PREFIX, tmp_path)
    process_tree.release(dead)
    exists = Path.exists

    def private(path: Path, *args, **kwargs) -> bool:  # what another user's 0700 directory answers
        if path.parent == foreign:
            raise PermissionError(13, "Permission denied", str(path))
        return exists(path, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", private)
    monkeypatch.setattr(process_tree, "_unheld", lambda path: path != foreign)  # nor may it be opened
    assert launcher.sweep_workdirs(tmp_path) == [dead]
    assert foreign.is_dir()
