"""A compiler that fails or hangs where the compiled beam step is built (serving/decoding/native.py):
a build of the same sources already in the cache is run instead of the numpy step, a hung compiler
leaves none of its passes running, and the warning blames the compiler, not the cache."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from serving.decoding import native


def _fake_open(where: Path) -> str:
    if where.read_bytes() != b"a library":
        raise OSError(f"{where}: invalid ELF header")
    return "opened"


def _read_only(cc: str, target: Path) -> Path:
    raise PermissionError(13, "Permission denied", str(target.parent))


@pytest.mark.parametrize("fails", ["compiler", "cache"])
def test_a_build_that_cannot_be_made_runs_the_build_of_the_same_sources_found_in_the_cache(
    native_cache, monkeypatch, caplog, fails
):
    """docs/deploy.md: an image builds the step when it is made and runs that build; where the image
    also had a ``cc`` that failed (no C library headers) or could not write anywhere, every worker ran
    the numpy step beside a build that loads."""
    cache = native_cache
    made = cache / f"beam_step-{native._source_digest()}-00000000.so"
    made.write_bytes(b"a library")
    monkeypatch.setattr(native, "compiler", lambda: "/bin/false")
    if fails == "cache":
        monkeypatch.setattr(native, "build", _read_only)
    monkeypatch.setattr(native, "_open", _fake_open)
    with caplog.at_level(logging.WARNING, logger="serving.decoding.native"):
        assert native._load() == "opened"
    assert native._loaded_path == [made]
    assert [r.getMessage() for r in caplog.records if str(made) in r.getMessage()], caplog.text


def test_a_compiler_that_fails_saying_nothing_is_named_in_the_warning_not_the_cache(
    native_cache, monkeypatch, caplog
):
    monkeypatch.setattr(native, "compiler", lambda: "/bin/false")
    with caplog.at_level(logging.WARNING, logger="serving.decoding.native"):
        assert native._load() is None
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "$CC names a working compiler" in said[0], said
    assert "KILN_CACHE_DIR" not in said[0]  # the cache was writable: the compiler failed


def _running(marker: str) -> list[int]:
    """The processes (not zombies) whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_hung_compiler_is_killed_with_its_passes(native_cache, tmp_path, monkeypatch, caplog):
    """A compiler driver whose pass hangs (``cc1`` on a stalled NFS read): the timeout killed the driver
    alone, and its pass ran on, one more at each start of each worker."""
    marker = f"kiln-test-hung-pass-{uuid.uuid4().hex}"
    driver = tmp_path / "hung-cc"
    driver.write_text(f"#!/bin/sh\n'{sys.executable}' -c 'import time; time.sleep(600)' {marker} &\nwait\n")
    driver.chmod(0o755)
    monkeypatch.setattr(native, "compiler", lambda: str(driver))
    monkeypatch.setattr(native, "BUILD_TIMEOUT_S", 3)  # ample for the shell to start its pass
    try:
        with caplog.at_level(logging.WARNING, logger="serving.decoding.native"):
            assert native._load() is None
        deadline = time.monotonic() + 10  # a killed pass is gone at once; a live one sleeps 600 s
        while _running(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _running(marker) == [], "the compiler's hung pass is still running"
        said = [r.getMessage() for r in caplog.records]
        assert len(said) == 1 and "timed out" in said[0] and "KILN_CACHE_DIR" not in said[0], said
    finally:
        for pid in _running(marker):
            os.kill(pid, signal.SIGKILL)


def test_a_compiler_that_fails_keeps_its_messages(tmp_path):
    """What the compiler said stays in the error (the warning quotes it; a full disk is read from it)."""
    with pytest.raises(subprocess.CalledProcessError) as failed:
        native._compile(["/bin/sh", "-c", "echo 'fatal error: stdint.h: No such file' >&2; exit 1"])
    assert b"stdint.h" in failed.value.stderr
