"""What a gateway killed outright (SIGKILL, the OOM killer) while it compiled the beam step leaves in the
build cache: its build's working directory, with the library in it, stayed there for good (one more at
each kill); the next build removes those no live build can own."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from serving.decoding import native

# a compiler that only writes the file after ``-o`` (what build() asks of one)
FAKE_CC = '#!/bin/sh\nwhile [ $# -gt 0 ]; do [ "$1" = -o ] && : > "$2"; shift; done\n'


def _fake_compiler(where: Path) -> str:
    cc = where / "fake-cc"
    cc.write_text(FAKE_CC)
    cc.chmod(0o755)
    return str(cc)


def _left_build(cache: Path, age_s: float) -> Path:
    """A build's working directory as a killed build leaves it: its library inside, ``age_s`` old."""
    left = cache / f"{native.BUILD_DIR_PREFIX}x1y2z3"
    left.mkdir(parents=True)
    (left / "beam_step-0123-4567.so").write_bytes(b"\x7fELF")
    then = time.time() - age_s
    os.utime(left, (then, then))
    return left


def test_a_build_removes_the_working_directory_a_killed_build_left(tmp_path):
    cache = tmp_path / "cache"
    left = _left_build(cache, age_s=3 * native.BUILD_TIMEOUT_S)
    built = native.build(_fake_compiler(tmp_path), cache / "beam_step-abcd-ef01.so")
    assert built.is_file()
    assert sorted(p.name for p in cache.iterdir()) == [built.name], f"{left.name} kept"


def test_a_build_keeps_the_working_directory_of_a_build_still_running(tmp_path):
    cache = tmp_path / "cache"
    running = _left_build(cache, age_s=1)  # another worker's build, compiling now
    native.build(_fake_compiler(tmp_path), cache / "beam_step-abcd-ef01.so")
    assert running.is_dir()


@pytest.mark.skipif(native.compiler() is None, reason="needs a C compiler (cc or $CC)")
def test_a_start_that_finds_its_build_cached_still_removes_what_a_killed_build_left(native_cache):
    """A gateway restarted at once after the kill builds the library (the leftover is too recent to
    remove then), and no later start builds again: the start, not only the build, sweeps."""
    assert native._load() is not None  # built: now in the cache
    left = _left_build(native_cache, age_s=3 * native.BUILD_TIMEOUT_S)
    assert native._load() is not None
    assert not left.exists()
