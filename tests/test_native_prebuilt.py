"""An image without a C compiler runs the compiled beam step built when the image was made
(``KILN_CACHE_DIR`` pointing into it), as docs/deploy.md tells images to do; with neither a compiler
nor a build, it warns once and runs the numpy step."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from serving.decoding import native

pytestmark = pytest.mark.skipif(native.compiler() is None, reason="no C compiler here to make the build with")

LOADED = (
    "import logging; logging.basicConfig(level=logging.WARNING)\n"
    "from serving.decoding import native\n"
    "path = native.loaded_path()\n"
    "from serving.decoding import native_decoder\n"
    "print(path is not None, path.name if path else None, native_decoder._c_library() is not None)\n"
)


def _run(env: dict[str, str]) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-c", LOADED], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run


def test_a_build_made_with_a_compiler_is_run_where_there_is_none(tmp_path):
    with_cc = {**os.environ, "KILN_CACHE_DIR": str(tmp_path)}
    built = _run(with_cc).stdout.split()
    assert built[0] == built[2] == "True"  # the beam step, and the decoder step over ONNX Runtime
    without_cc = {**with_cc, "CC": "no-such-compiler-kiln"}
    run = _run(without_cc)
    assert run.stdout.split() == built  # the same file, loaded, not rebuilt
    assert "no C compiler" not in run.stderr
    assert [p.name for p in tmp_path.iterdir()] == [built[1]]


def test_a_build_of_other_sources_is_not_run(tmp_path):
    stale = tmp_path / "beam_step-0123456789abcdef-00000000.so"
    stale.write_bytes(b"not a library")
    run = _run({**os.environ, "KILN_CACHE_DIR": str(tmp_path), "CC": "no-such-compiler-kiln"})
    assert run.stdout.split() == ["False", "None", "False"]
    assert run.stderr.count("no C compiler (cc or $CC) and no build in") == 1
