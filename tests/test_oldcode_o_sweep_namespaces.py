"""A gateway in another pid namespace (a container sharing /dev/shm or /tmp: ``docker run --ipc=host``)
leaves a live gateway's boards and directories alone (serving.workers.sweep_stale)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving import process_tree
from serving.execution.occupancy import BOARD_PREFIX
from serving.workers import METRICS_PREFIX, sweep_stale


def test_a_name_from_another_pid_namespace_is_not_swept(tmp_path, monkeypatch):
    """Before: the name held only the pid, and a gateway to which that pid was no process of its own
    removed the live gateway's metrics directory and boards at its start."""
    live = tmp_path / f"{process_tree.maker_prefix(METRICS_PREFIX)}abc"
    live.mkdir()
    board = tmp_path / f"{process_tree.maker_prefix(BOARD_PREFIX)}def"
    board.write_bytes(bytes(2))
    ours = process_tree._pid_namespace()
    if ours is None:
        pytest.skip("no procfs: no pid namespace to tell")
    # the sweeping gateway: another namespace, in which the makers' pid runs nothing
    monkeypatch.setattr(process_tree, "_pid_namespace", lambda: ours + 1)
    monkeypatch.setattr(process_tree, "running", lambda pid: False)
    assert sweep_stale((tmp_path,)) == []
    assert live.is_dir() and board.is_file()


def test_a_gone_makers_name_in_this_namespace_is_still_swept(tmp_path, monkeypatch):
    made = tmp_path / f"{process_tree.maker_prefix(METRICS_PREFIX)}abc"
    made.mkdir()
    monkeypatch.setattr(process_tree, "running", lambda pid: pid == os.getpid())
    assert sweep_stale((tmp_path,)) == []
    monkeypatch.setattr(process_tree, "running", lambda pid: False)
    assert sweep_stale((tmp_path,)) == [made]


def test_a_gateway_in_a_new_pid_namespace_keeps_a_live_gateways_files(tmp_path):
    """The same with a real namespace (``unshare``; root or user namespaces needed, else skipped)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    probe = subprocess.run(["unshare", "-p", "-f", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"no new pid namespace here: {probe.stderr.decode().strip()}")
    live = tmp_path / f"{process_tree.maker_prefix(METRICS_PREFIX)}abc"
    live.mkdir()
    code = f"from pathlib import Path; from serving.workers import sweep_stale; print(sweep_stale((Path({str(tmp_path)!r}),)))"
    done = subprocess.run(
        ["unshare", "-p", "-f", "--mount-proc", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert live.is_dir()
