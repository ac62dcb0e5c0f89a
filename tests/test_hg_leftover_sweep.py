"""The sweep every export runs of killed exports' staging (``sweep_all_leftovers``): an entry whose name
holds a dot (``export_checkpoint(name=...)``, as Triton's names may) is swept too, and another user's
live export, whose /proc entry a ``hidepid`` mount hides, is left alone."""

from __future__ import annotations

import os

from export import repository
from tests.test_hb_interrupted_exports import _dead_pid


def _leftover(repo, name: str, pid: int):
    area = repo.parent / f".{repo.name}{repository.STAGING_SUFFIX}"
    staged = area / f".{name}.tmp-{repository._HOST}-{pid}-0badf00d"
    (staged / "1").mkdir(parents=True)
    (staged / "1" / "model.onnx").write_text("a graph of hundreds of MB")
    return staged


def test_a_killed_exports_staging_of_an_entry_named_with_a_dot_is_swept(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    staged = _leftover(repo, "resnet.v2", _dead_pid())
    assert repository.sweep_all_leftovers(repo) == [staged]  # before: its name did not parse, kept for good
    assert not staged.parent.exists()


def test_another_users_live_export_hidden_by_hidepid_keeps_its_staging(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    pid = _dead_pid()  # no /proc entry, as hidepid=2 shows another user's process
    staged = _leftover(repo, "m", pid)
    kill = os.kill

    def another_users(target: int, sig: int) -> None:
        if target == pid:  # kill finds it: alive, owned by another user
            raise PermissionError(1, "Operation not permitted")
        kill(target, sig)

    monkeypatch.setattr(repository.os, "kill", another_users)
    assert repository.sweep_all_leftovers(repo) == []  # before: read as reaped, its live staging removed
    assert (staged / "1" / "model.onnx").exists()
