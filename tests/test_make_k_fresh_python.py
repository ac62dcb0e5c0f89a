"""``make setup`` (and so every target) on a fresh machine whose ``python3`` is not the one Kiln needs:
an older Python, or Debian's without ``python3-venv``. Each left a ``.venv`` that every later ``make``
reused, so fixing the machine and running make again failed the same way until ``.venv`` was removed.

The interpreters are stand-ins (scripts), so nothing is installed and no other Python is needed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.test_makefile_targets import ROOT, make, pytestmark  # noqa: F401 (skipped without make)


def stand_in_python(tmp_path: Path, name: str = "python3", version: tuple | None = None) -> tuple[Path, Path]:
    """An interpreter ``name`` that runs ``-c`` code (saying it is Python ``version`` where given) and logs
    (then refuses) anything else, ``-m venv`` included; every command it is given goes to the log beside it
    (writable by any user: make may run it as another)."""
    log = tmp_path / "python-calls.log"
    script = tmp_path / name
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"open({str(log)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "if sys.argv[1] != '-c':\n"
        "    sys.exit('stand-in python: only -c runs here')\n"
        + (f"sys.version_info = {version!r}\n" if version else "")
        + "code, sys.argv = sys.argv[2], ['-c', *sys.argv[3:]]\n"
        "exec(code)\n"
    )
    script.chmod(0o755)
    log.touch()
    log.chmod(0o666)
    return script, log


def old_python(tmp_path: Path) -> tuple[Path, Path]:
    """An interpreter that says it is Python 3.10 and logs every command it is given (the log, beside it)."""
    return stand_in_python(tmp_path, "python3.10", (3, 10, 13, "final", 0))


def test_an_older_python_is_named_before_a_venv_is_made_of_it(tmp_path):
    """pip refused to install Kiln (requires-python >=3.11) into the 3.10 .venv it had just made, and the
    next ``make setup PYTHON_SYS=python3.11`` kept that .venv."""
    python, log = old_python(tmp_path)
    venv = tmp_path / "venv"
    done = make(ROOT, "setup", f"PYTHON_SYS={python}", f"VENV={venv}")
    assert done.returncode != 0
    assert "is Python 3.10; Kiln needs 3.11 or newer" in done.stderr, done.stderr
    assert "PYTHON_SYS=python3.11" in done.stderr
    assert not os.path.lexists(venv)
    assert "-m venv" not in log.read_text()


def test_a_venv_of_an_older_python_is_named_with_what_to_do_before_pip_runs(tmp_path):
    python, log = old_python(tmp_path)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(python)
    done = make(ROOT, "setup", f"VENV={venv}")
    assert done.returncode != 0
    assert "is Python 3.10; Kiln needs 3.11 or newer" in done.stderr, done.stderr
    assert f"rm -rf {venv}" in done.stderr
    assert "pip" not in log.read_text()


def test_a_venv_that_python_could_not_finish_is_made_again_by_the_next_make(tmp_path):
    """Debian's python3 without python3-venv lays out the .venv, then stops: "ensurepip is not available".
    Its bin/python stayed, so after installing python3-venv every make ran ``.venv/bin/python -m pip`` and
    got "No module named pip"."""
    debian_python = tmp_path / "python3"
    debian_python.write_text(
        "#!/bin/bash\n"
        'if [ "$1 $2" = "-m venv" ]; then\n'
        f'  {sys.executable} -m venv --without-pip "$3"\n'
        '  echo "The virtual environment was not created successfully because ensurepip is not available." >&2\n'
        "  exit 1\n"
        "fi\n"
        f'exec {sys.executable} "$@"\n'
    )
    debian_python.chmod(0o755)
    venv = tmp_path / "venv"
    done = make(ROOT, "setup", f"PYTHON_SYS={debian_python}", f"VENV={venv}")
    assert done.returncode != 0 and "ensurepip is not available" in done.stderr, done.stderr
    assert (venv / "bin").is_dir(), "the stand-in did not lay out the environment"
    assert not os.path.lexists(venv / "bin" / "python")
    # so the next make (python3-venv installed) makes the environment again rather than using this one
    again = make(ROOT, "-n", "setup", f"VENV={venv}")
    assert f"-m venv --clear {venv}\n" in again.stdout, again.stdout
    assert "pip install --quiet -c constraints/main.txt -e" in again.stdout


def test_a_venv_whose_python_is_gone_is_made_anew_and_installed_into_in_the_same_make(tmp_path):
    """Its Python upgraded or removed (pyenv uninstall, a distribution upgrade), .venv/bin/python is a
    dangling link: venv over the old .venv kept the link, so every make stopped at "No such file or
    directory", and the stamp of the old install stayed."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"home = {tmp_path / 'gone'}\n")
    (venv / "bin" / "python3").symlink_to(tmp_path / "gone" / "python3")
    (venv / "bin" / "python").symlink_to("python3")
    (venv / ".kiln-installed-cpu-bench-dev").touch()
    done = make(ROOT, "-n", "setup", f"VENV={venv}")
    assert done.returncode == 0, done.stderr
    assert f"-m venv --clear {venv}\n" in done.stdout, done.stdout
    assert "pip install --quiet -c constraints/main.txt -e" in done.stdout
