"""A killed gateway's shared-weights directory is removed by a later gateway though it was made in
another pid namespace (a container restarted since, /tmp kept), while a live gateway's is kept, in
any namespace (serving.process_tree.make_held_dir, serving.workers.sweep_stale)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from serving import process_tree
from serving.execution.shared_weights import PREFIX, WeightStore, create_store_dir
from serving.workers import sweep_stale

ROOT = Path(__file__).resolve().parents[1]


def enter_another_namespace(monkeypatch) -> int:
    """From now on this process sits in another pid namespace (the sweeping gateway's), in which every
    pid runs something (a restarted container's own processes reuse the low pids the killed gateway
    had). Returns the namespace it left."""
    ours = process_tree._pid_namespace()
    if ours is None:
        pytest.skip("no procfs: no pid namespace to tell")
    monkeypatch.setattr(process_tree, "_pid_namespace", lambda: ours + 1)
    monkeypatch.setattr(process_tree, "running", lambda pid: True)
    return ours


def killed_gateways_store(tmp_path: Path) -> Path:
    """The weights directory of a gateway process killed by SIGKILL (it had no chance to remove it)."""
    code = "from serving.execution.shared_weights import create_store_dir; print(create_store_dir(), flush=True); input()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    made = Path(proc.stdout.readline().strip())
    proc.kill()
    proc.wait(timeout=60)
    proc.stdout.close()
    proc.stdin.close()
    assert made.parent == tmp_path and made.is_dir()
    return made


def test_a_killed_gateways_weights_made_in_another_pid_namespace_are_swept(tmp_path, monkeypatch):
    """Before: its name held another namespace's pid, which no process here could be checked for, so
    it was kept at every start: each restart of the container left its models' weights in /tmp."""
    made = killed_gateways_store(tmp_path)
    enter_another_namespace(monkeypatch)
    (made / "model.onnx").write_bytes(b"weights")
    assert sweep_stale((tmp_path,)) == [made]
    assert not made.exists()


def test_a_live_gateways_weights_are_kept_from_another_namespace(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    store = WeightStore()
    enter_another_namespace(monkeypatch)
    monkeypatch.setattr(process_tree, "running", lambda pid: False)  # its pid says nothing here
    try:
        assert store.root is not None and store.root.parent == tmp_path
        assert sweep_stale((tmp_path,)) == []
        assert store.root.is_dir()
    finally:
        store.close()
    assert not store.root.exists() and store.root not in process_tree._held


def test_a_live_gateways_weights_are_kept_by_a_sweep_in_its_own_namespace(tmp_path, monkeypatch):
    """Its own namespace too, where a pid reused by another process no longer decides."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = create_store_dir()
    try:
        assert made.name.startswith(process_tree.maker_prefix(PREFIX) + process_tree.HELD + "-")
        assert sweep_stale((tmp_path,)) == []
    finally:
        process_tree.release(made)
    assert sweep_stale((tmp_path,)) == [made]  # released without removing it: as if its maker ended


def test_an_unheld_name_from_another_namespace_is_still_kept(tmp_path, monkeypatch):
    """A name without the mark (an older gateway's) cannot be told dead from another namespace."""
    old = tmp_path / f"{process_tree.maker_prefix(PREFIX)}abcdefgh"
    old.mkdir()
    enter_another_namespace(monkeypatch)
    monkeypatch.setattr(process_tree, "running", lambda pid: False)
    assert sweep_stale((tmp_path,)) == []
    assert old.is_dir()


def test_weights_made_in_a_real_new_pid_namespace_are_kept_while_it_runs_and_swept_after(tmp_path):
    """The same with a real namespace (``unshare``; root or user namespaces needed, else skipped): its
    maker is pid 1 there, a pid that also runs here."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    probe = subprocess.run(["unshare", "-p", "-f", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"no new pid namespace here: {probe.stderr.decode().strip()}")
    code = "from serving.execution.shared_weights import create_store_dir; print(create_store_dir(), flush=True); input()"
    proc = subprocess.Popen(
        ["unshare", "-p", "-f", "--kill-child", "--mount-proc", sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # unshare's note on its child's SIGKILL
        text=True,
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        made = Path(proc.stdout.readline().strip())
        assert made.name.startswith(f"{PREFIX}1-ns") and made.is_dir()
        assert sweep_stale((tmp_path,)) == []
    finally:
        # the maker (unshare's child) killed: no clean-up; unshare reaps it, then ends
        with contextlib.suppress(FileNotFoundError):  # unshare ended already
            for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                os.kill(int(child), signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
        proc.stdin.close()
    assert sweep_stale((tmp_path,)) == [made]
