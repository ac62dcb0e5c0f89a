"""``make setup`` installs what is missing: a package removed from ``.venv`` after the install stamp was written
(``pip uninstall fastapi``) left ``make setup`` saying "Nothing to be done" and every target stopping on a
ModuleNotFoundError. The Makefile is read with ``make -n`` on a stand-in environment whose ``bin/python``
says what ``kiln.installed`` would (nothing is installed or run); ``kiln.installed`` is called directly."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from kiln import installed
from tests.test_makefile_targets import ROOT, make


def stand_in_venv(tmp_path: Path, says: str) -> tuple[Path, Path]:
    """A ``VENV`` make takes for installed (a stamp newer than what it depends on, a triton-env) whose python
    prints ``says`` and notes each call in the file returned."""
    venv, calls = tmp_path / "venv", tmp_path / "calls"
    (venv / "bin").mkdir(parents=True)
    (venv / "triton-env" / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f"#!/bin/sh\necho \"$*\" >> '{calls}'\necho '{says}'\n")
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    (venv / "triton-env" / "bin" / "python").write_text("")
    stamp = venv / ".kiln-installed-cpu-bench-dev"
    stamp.write_text("")
    future = time.time() + 3600
    os.utime(stamp, (future, future))
    return venv, calls


pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def test_setup_installs_again_what_was_removed_since_the_stamp(tmp_path):
    venv, calls = stand_in_venv(tmp_path, "fastapi (not installed)")
    done = make(ROOT, "-n", "setup", f"VENV={venv}")
    assert done.returncode == 0, done.stderr
    assert "lacks what make setup installed: fastapi (not installed); installing it again" in done.stdout
    assert "pip install" in done.stdout and "-m kiln.installed " in calls.read_text()


def test_a_target_that_needs_the_install_repairs_it_first(tmp_path):
    venv, _ = stand_in_venv(tmp_path, "numpy 1.20.0 (Kiln needs >=1.26)")
    done = make(ROOT, "-n", "serve", f"VENV={venv}")
    assert done.returncode == 0, done.stderr
    assert "numpy 1.20.0 (Kiln needs >=1.26)" in done.stdout and "pip install" in done.stdout


def test_a_complete_install_is_left_alone(tmp_path):
    venv, _ = stand_in_venv(tmp_path, "")
    done = make(ROOT, "-n", "setup", f"VENV={venv}")
    assert done.returncode == 0 and "Nothing to be done" in done.stdout, done.stdout


def test_make_asks_for_triton_env_too(tmp_path):
    venv, calls = stand_in_venv(tmp_path, "")
    make(ROOT, "-n", "setup", f"VENV={venv}")
    assert (
        f"-m kiln.installed --triton-env {venv}/triton-env cpu,bench,dev nvidia-pytriton>=0.5"
        in calls.read_text()
    )


def made_from(env: Path, version: str) -> Path:
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text("")
    (env / "pyvenv.cfg").write_text(
        f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {version}\n"
    )
    return env


def test_a_triton_env_missing_or_of_another_python_is_named(tmp_path):
    ours = "{}.{}".format(*sys.version_info[:2])
    assert installed.triton_env_problem(made_from(tmp_path / "same", f"{ours}.1")) is None
    other = installed.triton_env_problem(made_from(tmp_path / "other", "3.9.18"))
    assert other == f"{tmp_path / 'other'} (Triton's models' environment): made from Python 3.9, not {ours}"
    gone = installed.triton_env_problem(tmp_path / "gone")
    assert gone == f"{tmp_path / 'gone'} (Triton's models' environment): not there"


def python_saying(path: Path, version: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.parametrize(("theirs", "kept"), [("3 11", True), ("3 10", False), (None, False)])
def test_setup_makes_triton_env_from_its_own_python_and_anew_where_it_is_of_another(tmp_path, theirs, kept):
    """Triton runs the models with the stub of .venv's Python; a triton-env that PYTHON_SYS's python3 made
    (another version) left every model UNAVAILABLE: "No module named 'numpy'". The recipe's lines are run
    here on stand-in pythons that print their version."""
    venv = tmp_path / "venv"
    python_saying(venv / "bin" / "python", "3 11")
    (venv / "triton-env").mkdir()
    if theirs is not None:  # else: a triton-env whose python is gone
        python_saying(venv / "triton-env" / "bin" / "python", theirs)
    done = make(ROOT, "-n", "setup", f"VENV={venv}", "PYTHON_SYS=python3-of-another-version")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"{venv}/bin/python -m venv {venv}/triton-env" in lines
    assert not any("python3-of-another-version -m venv" in line for line in lines)
    at = next(i for i, line in enumerate(lines) if "rm -rf" in line and "triton-env" in line)
    subprocess.run(["bash", "-c", "\n".join(lines[at - 1 : at + 1])], check=True, timeout=30)
    assert (venv / "triton-env").exists() == kept


@pytest.mark.parametrize("target", ["help", "clean"])
def test_targets_that_install_nothing_do_not_check(tmp_path, target):
    venv, calls = stand_in_venv(tmp_path, "fastapi (not installed)")
    done = make(ROOT, "-n", target, f"VENV={venv}")
    assert done.returncode == 0 and not calls.exists(), done.stderr


def test_installed_names_what_is_missing_or_refused():
    """(Compared with what this environment already lacks, if anything: a GPU=1 install has no onnxruntime.)"""
    already = installed.problems({"cpu"})
    missing = installed.problems({"cpu"}, ["kiln-makehunt-no-such-package>=1"])
    assert missing == [*already, "kiln-makehunt-no-such-package (not installed)"]
    numpy = metadata.version("numpy")
    assert installed.problems({"cpu"}, ["numpy>=99999"]) == [*already, f"numpy {numpy} (Kiln needs >=99999)"]
    # another extra's requirement, or another platform's, is not asked for
    assert installed.problems({"cpu"}, ["kiln-makehunt-no-such-package; extra == 'gpu'"]) == already
    assert (
        installed.problems({"cpu"}, ["kiln-makehunt-no-such-package; sys_platform == 'nowhere'"]) == already
    )


def test_installed_without_the_project_says_so(monkeypatch):
    def gone(name: str) -> None:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(installed.metadata, "requires", gone)
    assert installed.problems({"cpu"}) == ["kiln itself (the project, installed editable; not installed)"]
