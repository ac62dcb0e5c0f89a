"""``check_versions`` judges every checkpoint of a run before the first is written. It ran before the
sweep of a killed run's leftovers that each checkpoint's turn begins with, so an entry that run had
swapped out (killed between ``_swap_in``'s two renames, where no exchange is) was judged a new one:
``--version 2 --version-policy specific:1`` was refused as leaving a new entry nothing to serve, on
every run, though the entry put back holds version 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from export import repository
from export.pipeline import check_versions
from export.repository import entry_versions, write_entry
from export.results import ExportOptions
from tests.repo_fixtures import _tiny_checkpoint
from tests.test_hb2_export_versions import _fill


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_an_entry_a_killed_run_swapped_out_is_put_back_before_the_versions_are_judged(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_entry(repo, "lenet", _fill("v1", sha="one"))
    os.replace(repo / "lenet", repo / f".lenet.old-{repository._HOST}-{_dead_pid()}-0badf00d")
    ckpt = _tiny_checkpoint(tmp_path / "lenet.pt", "lenet", 2)
    check_versions([ckpt], repo, ExportOptions(version="2", version_policy="specific:1"))  # was refused
    assert entry_versions(repo / "lenet") == ["1"]
