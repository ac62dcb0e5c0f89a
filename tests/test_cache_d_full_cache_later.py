"""A process started after another built the compiled kernels in the temporary directory (its cache had
no room) loads that build without compiling into the full cache again (serving/decoding/native.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.decoding import native
from tests.test_oldcode_o_full_cache import full_disk_compiler


@pytest.fixture
def full_cache(tmp_path, monkeypatch) -> Path:
    """``KILN_CACHE_DIR`` on a "full" disk (:func:`full_disk_compiler`); each call of ``native._load``
    stands for a new process."""
    return full_disk_compiler(tmp_path, monkeypatch)


def compiles(tmp_path: Path) -> list[str]:
    calls = tmp_path / "calls"
    return calls.read_text().split() if calls.exists() else []


def test_a_later_process_loads_the_temporary_build_without_compiling_into_the_full_cache(
    full_cache, tmp_path
):
    """Before: every process compiled into the full cache first (~1.4 s to fail), then found the build
    the first one had made in the temporary directory."""
    first = native._load()
    assert first == tmp_path / "tmp-cache" / native.library_path(native.compiler()).name
    assert len(compiles(tmp_path)) == 2  # the full cache's failure, then the temporary directory's build
    assert native._load() == first
    assert len(compiles(tmp_path)) == 2  # the next process compiled nothing
    assert native._loaded_path == [first]


def test_a_temporary_build_of_other_sources_is_not_taken(full_cache, tmp_path, monkeypatch):
    """The cache key still decides: a build there for other sources (an older Kiln) is not this one."""
    native._load()
    monkeypatch.setattr(native, "_source_digest", lambda: "0123456789abcdef")
    assert native._load() == tmp_path / "tmp-cache" / native.library_path(native.compiler()).name
    assert len(compiles(tmp_path)) == 4  # the new key was built, after the full cache failed it again


def test_a_temporary_cache_others_may_write_is_not_loaded_from(full_cache, tmp_path):
    """What is there is loaded as code: a directory another user could write is refused, not read."""
    native._load()
    (tmp_path / "tmp-cache").chmod(0o777)
    assert native._load() is None
    assert len(compiles(tmp_path)) == 3  # tried the full cache, then refused the temporary one


def test_a_cache_with_room_is_still_built_in_when_no_temporary_build_exists(
    tmp_path, full_cache, monkeypatch
):
    roomy = tmp_path / "roomy"
    monkeypatch.setenv("KILN_CACHE_DIR", str(roomy))
    assert native._load() == roomy / native.library_path(native.compiler()).name
    assert not (tmp_path / "tmp-cache").exists()
