"""The tiny repositories tests export once a process and keep in TMPDIR: removed at the process's exit,
and those of a run killed before its exit (a CI job's hard timeout, ``kill -9``) removed by a later run,
not left in /tmp for good, one more at every killed run."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from serving.process_tree import maker_prefix
from tests.repo_fixtures import KEPT_PREFIX, sweep_killed_runs_repositories


def _ended_pid() -> int:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    return ended.pid


def test_a_later_run_removes_the_kept_repository_a_killed_run_left_and_keeps_a_live_runs(tmp_path):
    mine = maker_prefix(KEPT_PREFIX)
    killed = tmp_path / f"{mine.replace(f'-{os.getpid()}-', f'-{_ended_pid()}-')}abcd1234"
    live, foreign = tmp_path / f"{mine}efgh5678", tmp_path / "kiln-test-repository-old-style"
    for kept in (killed, live, foreign):
        (kept / "repo").mkdir(parents=True)
    assert sweep_killed_runs_repositories(tmp_path) == [killed]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, foreign.name])


def test_the_kept_repository_is_named_after_the_process_that_keeps_it(tmp_path, monkeypatch):
    from tests import repo_fixtures

    def exported(root: Path, *_: object) -> Path:  # the export itself is not what this test is about
        (root.parent / "repo-checkpoints").mkdir(parents=True)
        root.mkdir()
        return root

    monkeypatch.setattr(repo_fixtures, "_export_classifiers", exported)
    monkeypatch.setattr(repo_fixtures, "_EXPORTED", {})
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    repo_fixtures.build_classifier_repository(tmp_path / "mine" / "repo")
    (kept,) = [path for path, _ in repo_fixtures._EXPORTED.values()]
    assert kept.parent.parent == tmp_path and kept.parent.name.startswith(maker_prefix(KEPT_PREFIX))
