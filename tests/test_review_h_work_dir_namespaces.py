"""A running export's TMPDIR working directory is kept by the sweep of another export that cannot see
its process: one in another PID namespace (a container sharing /tmp and the host's name)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from export.repository import _HOST
from export.work_dir import sweep_work_dirs

ROOT = Path(__file__).parents[1]
RUNNING_EXPORT = """
import sys
from export.work_dir import work_directory
with work_directory() as work:
    (work / "fp32").mkdir()
    print(work, flush=True)
    sys.stdin.read()  # the export runs until the test closes its stdin
"""
SWEEP = "from export.work_dir import sweep_work_dirs\nprint(len(sweep_work_dirs()))\n"


def _running_export(tmpdir: Path) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    export = subprocess.Popen(
        [sys.executable, "-c", RUNNING_EXPORT],
        env=env,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert export.stdout is not None
    return export, Path(export.stdout.readline().decode().strip())


def _ended_pid() -> int:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    return ended.pid


def test_a_running_exports_directory_named_by_a_pid_not_seen_here_is_kept(tmp_path: Path) -> None:
    # the sweep went by the pid alone: a live export in another PID namespace (its pid no process of
    # this one's) had its graphs removed from under it; it now holds a lock the kernel drops at its end
    export, work = _running_export(tmp_path)
    unseen = work.with_name(f"kiln-export-{_HOST}-{_ended_pid()}-0123abcd")  # its name seen from here
    try:
        work.rename(unseen)
        assert sweep_work_dirs(tmp_path) == []
        assert (unseen / "fp32").is_dir()
    finally:
        export.communicate(b"")
    assert sweep_work_dirs(tmp_path) == [unseen]  # ended: its lock went with it
    assert not unseen.exists()


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True)
    return done.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs unshare --pid (root or user namespaces)")
def test_an_export_in_another_pid_namespace_keeps_this_ones_directory(tmp_path: Path) -> None:
    export, work = _running_export(tmp_path)
    try:
        env = {**os.environ, "TMPDIR": str(tmp_path)}
        command = ["unshare", "--pid", "--fork", sys.executable, "-c", SWEEP]
        swept = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
        assert swept.stdout.strip() == "0", swept.stderr
        assert (work / "fp32").is_dir()
    finally:
        export.communicate(b"")
    assert not work.exists()
