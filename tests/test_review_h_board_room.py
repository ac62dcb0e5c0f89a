"""The workers' shared boards on a filesystem that reports no size (a tmpfs mounted ``size=0``, a FUSE
mount without statfs): statvfs says 0 bytes free there, which is no room the filesystem lacks."""

from __future__ import annotations

import errno
import os

import pytest

from serving.execution import occupancy

REAL_STATVFS = os.statvfs


def _no_size(path):
    """statvfs as such a filesystem answers it: no blocks at all, so none free."""
    real = REAL_STATVFS(path)
    return os.statvfs_result((real.f_bsize, real.f_frsize, 0, 0, 0, 0, 0, 0, real.f_flag, real.f_namemax))


def test_a_board_is_written_where_the_filesystem_reports_no_size(tmp_path, monkeypatch):
    # refused as "No space left on device (0 KiB free)" in /dev/shm and in TMPDIR alike: --workers 2
    # stopped at start-up where writing its two bytes succeeded
    monkeypatch.setattr(os, "statvfs", _no_size)
    board = occupancy._write_zeros("kiln-test-", 2, str(tmp_path))
    assert board.read_bytes() == bytes(2)


def test_a_board_beyond_the_machines_memory_is_still_refused_there_before_any_write(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "statvfs", _no_size)
    with pytest.raises(OSError) as refused:
        occupancy._write_zeros("kiln-test-", 10**20, str(tmp_path))
    assert refused.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
