"""An export killed outright (OOM killer, kill -9) leaves its TMPDIR working directory; the next one
removes it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from export.pipeline import export_checkpoint
from export.work_dir import sweep_work_dirs
from tests.classifier_exports import write_checkpoint

KILLED_EXPORT = """
import os, signal, sys
import export.pipeline as pipeline
pipeline._exporter = lambda task: lambda ctx, work: os.kill(os.getpid(), signal.SIGKILL)
pipeline.export_checkpoint(sys.argv[1], sys.argv[2], tensorrt="off")
"""


def _work_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("kiln-export-"))


def test_the_working_directory_of_a_killed_export_is_removed_by_the_next_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmpdir, repository = tmp_path / "tmp", tmp_path / "repo"
    tmpdir.mkdir()
    ckpt = write_checkpoint(tmp_path / "ckpt", "lenet")
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_EXPORT, str(ckpt), str(repository)],
        env=env,
        cwd=Path(__file__).parents[1],
    )
    assert killed.returncode == -9
    assert len(_work_dirs(tmpdir)) == 1  # what the kill left
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    export_checkpoint(ckpt, repository, tensorrt="off")
    assert _work_dirs(tmpdir) == []


def test_the_working_directory_of_a_running_export_is_kept(tmp_path: Path) -> None:
    """Another export of this host, still running (here: this test's parent process), keeps its own."""
    from export.repository import _HOST

    mine = tmp_path / f"kiln-export-{_HOST}-{os.getppid()}-0123abcd"
    foreign = tmp_path / "kiln-export-not-a-kiln-name"  # named before Kiln named them: kept a day
    for path in (mine, foreign):
        (path / "fp32").mkdir(parents=True)
    assert sweep_work_dirs(tmp_path) == []
    assert _work_dirs(tmp_path) == sorted([mine.name, foreign.name])
