"""The compiled kernels' build as a sanitizer run needs it (serving/decoding/native.py).

The kernels are checked under AddressSanitizer and UndefinedBehaviorSanitizer by building them with
``$CC`` carrying the sanitizer flags into a cache of their own and preloading the runtimes:

    CC="gcc -fsanitize=address,undefined -fno-omit-frame-pointer -g" KILN_CACHE_DIR=/tmp/kiln-asan \
    LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    PYTHONMALLOC=malloc python -m pytest tests/test_native_step.py tests/test_native_decoder.py ...

These tests pin what such a run depends on.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from serving.decoding import native


def _recording_compiler(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in C compiler that records its arguments, one a line, and writes an empty ``-o`` file."""
    record, program = tmp_path / "argv", tmp_path / "record-cc"
    program.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > {shlex.quote(str(record))}\n'
        'while [ "$1" != "-o" ]; do shift; done\n'
        ': > "$2"\n'
    )
    program.chmod(0o755)
    return program, record


def test_a_compiler_command_with_arguments_builds_with_them_into_a_build_of_its_own(tmp_path, monkeypatch):
    """``CC="gcc -fsanitize=address,undefined"`` compiled with gcc alone (the arguments dropped) into the
    plain build's file, so a sanitized run silently ran unsanitized kernels, and a plain run after it
    the sanitized build."""
    program, record = _recording_compiler(tmp_path)
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(program))
    plain = native.compiler()
    monkeypatch.setenv("CC", f"{program} -fsanitize=address,undefined -g")
    sanitized = native.compiler()
    assert plain == str(program)
    assert native.library_path(sanitized) != native.library_path(plain)
    built = native.build(sanitized, native.library_path(sanitized))
    assert built.is_file()
    assert record.read_text().splitlines()[:3] == ["-fsanitize=address,undefined", "-g", *native.FLAGS[:1]]


def test_a_compiler_command_whose_program_is_missing_is_no_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", f"{tmp_path / 'no-such-cc'} -O1")
    assert native.compiler() is None
    monkeypatch.setenv("CC", "'unbalanced")  # read word by word, as before: a program that is not there
    assert native.compiler() is None


def test_an_empty_or_blank_cc_means_cc_not_a_crash(monkeypatch):
    """``export CC=`` made the first load raise IndexError (the gateway's translators could not start)."""
    for blank in ("", "  "):
        monkeypatch.setenv("CC", blank)
        assert native.compiler() == (shutil.which("cc") and shlex.join([shutil.which("cc")]))
