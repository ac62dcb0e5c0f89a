"""A cache of compiled kernels with no room left (a full disk, a home over its quota) builds them in the
temporary directory, as an unwritable one does (serving/decoding/native.py)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from serving.decoding import native


@pytest.fixture
def full_cache(tmp_path, monkeypatch) -> Path:
    return full_disk_compiler(tmp_path, monkeypatch)


def full_disk_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``KILN_CACHE_DIR`` on a "full" disk: a stand-in compiler notes each run's output in
    ``tmp_path / "calls"``, fails as ``ld`` does there, and writes an empty ``-o`` file anywhere else;
    opening a build is faked (it returns the path it opened)."""
    full, calls = tmp_path / "full", tmp_path / "calls"
    program = tmp_path / "cc-on-a-full-disk"
    program.write_text(
        "#!/bin/sh\n"
        'while [ "$1" != "-o" ]; do shift; done\n'
        f'echo "$2" >> {calls}\n'
        f'case "$2" in {full}/*) echo "/usr/bin/ld: final link failed: '
        f'{os.strerror(errno.ENOSPC)}" >&2; exit 1;; esac\n'
        ': > "$2"\n'
    )
    program.chmod(0o755)
    monkeypatch.setenv("CC", str(program))
    monkeypatch.setenv("KILN_CACHE_DIR", str(full))
    monkeypatch.delenv("KILN_NATIVE", raising=False)
    monkeypatch.setattr(native, "temp_cache_dir", lambda: tmp_path / "tmp-cache")
    monkeypatch.setattr(native, "_open", lambda path: path)
    monkeypatch.setattr(native, "_loaded_path", [])
    return full


def test_a_full_cache_builds_in_the_temporary_directory(full_cache, tmp_path):
    """Before: the build failed ("No space left on device") and every translator of every worker
    decoded with the numpy step and without the fused attention, though /tmp had room."""
    opened = native._load()
    assert opened == tmp_path / "tmp-cache" / native.library_path(native.compiler()).name
    assert opened.is_file()
    assert native._loaded_path == [opened]


def test_a_build_that_fails_otherwise_still_warns_and_leaves_the_numpy_step(
    full_cache, tmp_path, monkeypatch
):
    """Only want of room is worth a second build: a compiler error fails the same in any directory."""
    program = tmp_path / "broken-cc"
    program.write_text('#!/bin/sh\necho "error: unknown type name" >&2\nexit 1\n')
    program.chmod(0o755)
    monkeypatch.setenv("CC", str(program))
    assert native._load() is None
    assert not (tmp_path / "tmp-cache").exists()


def test_no_room_reads_errors_and_compiler_messages():
    assert native._no_room(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert native._no_room(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)))
    assert not native._no_room(OSError(errno.EACCES, os.strerror(errno.EACCES)))

    class Failed(Exception):
        stderr = f"ld: write failed: {os.strerror(errno.EDQUOT)}".encode()

    assert native._no_room(Failed())
