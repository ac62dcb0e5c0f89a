"""A build of the compiled beam step by a sanitizing compiler (``CC="gcc -fsanitize=address,undefined"``,
as a sanitized test run makes in the same per-user cache) ends a process started without its runtime
when opened ("ASan runtime does not come first in initial library list", exit 1). Run in place of a
build that failed, or where no compiler exists, it killed the gateway at its first translator; such a
build is passed over, unless the process has that runtime (LD_PRELOAD), and the numpy step runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.decoding import native

REPO = Path(__file__).resolve().parents[1]


def _as_sanitizer_ends_it(where: Path) -> str:
    """Opening ``where`` as the dynamic loader does: a sanitized build's runtime exits the process."""
    if b"__asan_init" in where.read_bytes():
        raise SystemExit("==1==ASan runtime does not come first in initial library list")
    return f"opened {where.name}"


def _builds(cache: Path) -> tuple[Path, Path]:
    """A plain build, and a sanitized one made after it (the newest)."""
    plain = cache / f"beam_step-{native._source_digest()}-00000000.so"
    plain.write_bytes(b"a library")
    sanitized = cache / f"beam_step-{native._source_digest()}-11111111.so"
    sanitized.write_bytes(b"a library needing __asan_init")
    os.utime(plain, (time.time() - 60, time.time() - 60))
    return plain, sanitized


@pytest.mark.parametrize("cc", ["/bin/false", None])  # a compiler that fails, and none
def test_a_sanitized_build_in_the_cache_is_passed_over(native_cache, monkeypatch, cc):
    cache = native_cache
    plain, _ = _builds(cache)
    monkeypatch.setattr(native, "compiler", lambda: cc)
    monkeypatch.setattr(native, "_open", _as_sanitizer_ends_it)
    assert native._load() == f"opened {plain.name}"
    assert native._loaded_path == [plain]


def _sanitizing_cc() -> str | None:
    """gcc with AddressSanitizer, where this machine has its runtime."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    runtime = subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout
    return f"{gcc} -fsanitize=address,undefined" if os.path.isabs(runtime.strip() or "x") else None


def _load_in_a_process(cache: Path, cc: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KILN_CACHE_DIR": str(cache), "CC": cc, "KILN_NATIVE": "1"}
    env.pop("LD_PRELOAD", None)
    code = "from serving.decoding import native; print('loaded', native.load() is not None)"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_a_gateway_whose_compiler_fails_beside_a_real_sanitized_build_keeps_running(tmp_path):
    sanitizing = _sanitizing_cc()
    if sanitizing is None:
        pytest.skip("no gcc with AddressSanitizer's runtime here")
    cache = tmp_path / "cache"
    _load_in_a_process(cache, sanitizing)  # builds it (and cannot open it itself: no runtime preloaded)
    assert list(cache.glob("beam_step-*.so")), "the sanitized build was not made"
    failing = tmp_path / "cc"
    failing.write_text("#!/bin/sh\nexit 1\n")
    failing.chmod(0o755)
    ran = _load_in_a_process(cache, str(failing))
    assert ran.returncode == 0 and "loaded False" in ran.stdout, ran.stderr
