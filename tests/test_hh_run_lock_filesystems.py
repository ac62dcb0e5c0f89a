"""The training run's lock where a filesystem keeps none, and where its file was removed while held.

On a filesystem whose ``flock`` fails outright (Lustre mounted without ``-o flock``, some FUSE mounts:
ENOSYS, ENOLCK, EOPNOTSUPP) a run that trained there before the lock existed failed before its first
epoch ("error: [Errno 38] Function not implemented", exit 1): it trains, and says in a warning that it
cannot refuse a second run. And a run whose lock file was removed while it held it (``rm``, a cleanup)
removed, as it ended, the lock file of the run that started meanwhile, so a third one was not refused."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest

from training import classify
from training import run_lock as run_lock_module
from training.run_lock import RunLocked, lock_path, run_lock


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_filesystem_without_locks_trains_with_a_warning(
    code: int, tmp_path: Path, capsys, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def flock(fd: int, operation: int) -> None:
        raise OSError(code, "no locks here")

    monkeypatch.setattr(run_lock_module.fcntl, "flock", flock)
    out = tmp_path / "ckpt"
    argv = ["--model", "lenet", "--dataset", "folder", "--data-path", str(tmp_path / "missing")]
    with caplog.at_level(logging.WARNING, logger="training.run_lock"):
        # past the lock: refused as it reads its data (a folder that is not there), as without a lock
        assert classify.main([*argv, "--output-dir", str(out), "--name", "net"]) == 2
    err = capsys.readouterr().err
    assert "data path does not exist" in err and "no locks here" not in err, err
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "training.run_lock"]
    assert f"--output-dir {out}: its filesystem keeps no file locks (no locks here)" in warning
    assert "cannot refuse another one under --name net" in warning
    assert not out.exists()  # neither the lock file nor the folder made for it is left


def test_another_error_of_flock_is_not_taken_for_a_filesystem_without_locks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def flock(fd: int, operation: int) -> None:
        raise OSError(errno.EIO, "input/output error")

    monkeypatch.setattr(run_lock_module.fcntl, "flock", flock)
    with pytest.raises(OSError, match="input/output error"), run_lock(tmp_path, "net", writer=True):
        pass


def test_a_run_whose_lock_file_was_removed_leaves_the_next_runs_lock_in_place(tmp_path: Path) -> None:
    path = lock_path(tmp_path, "net")
    with run_lock(tmp_path, "net", writer=True):  # the first run
        path.unlink()  # removed while it trains
        second = run_lock(tmp_path, "net", writer=True)
        second.__enter__()  # a second run takes a lock of its own: a new file
    try:
        assert path.exists()  # the first, ending, left the second's file
        with pytest.raises(RunLocked), run_lock(tmp_path, "net", writer=True):  # so a third is refused
            pass
    finally:
        second.__exit__(None, None, None)
    assert not path.exists()
