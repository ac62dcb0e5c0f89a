"""``make`` (every target installs first) in a checkout whose ``.venv`` this user cannot read: another
user's, in a shared checkout. make could not stat ``.venv/bin/python``, took it for missing and ran
``python3 -m venv`` over it, with ``--clear`` where ``pyvenv.cfg`` showed: a venv whose directory this user
could write was emptied and made again as this user's. It is refused, named, and left as it is.

The interpreter is a stand-in (a script), so nothing is installed. Root reads everything: as root, make
runs in a user namespace as an unprivileged user, where the modes below bind it as they bind any user."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.test_make_k_fresh_python import stand_in_python
from tests.test_makefile_targets import ROOT, clean_environment, pytestmark  # noqa: F401 (skipped without make)

AS_USER = ["unshare", "--user", "--map-user=65534", "--map-group=65534"]


def unprivileged() -> list[str]:
    """The prefix that runs a command as a user the file modes bind: none for a user, ``AS_USER`` for root."""
    if os.geteuid() != 0:
        return []
    try:
        probe = subprocess.run([*AS_USER, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        probe = None
    if probe is None or probe.returncode != 0:
        pytest.skip("running as root, and no user namespace to drop to (unshare --user)")
    return AS_USER


@pytest.mark.parametrize("closed", ["the venv's directory", "the python it links to"])
def test_a_venv_this_user_cannot_read_is_refused_and_left_as_it_is(tmp_path, closed):
    prefix = unprivileged()
    python, log = stand_in_python(tmp_path)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "owner's work").write_text("kept")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (venv / "bin" / "python").symlink_to(elsewhere / "python3")
    (elsewhere / "python3").symlink_to(sys.executable)
    closed_dir = venv if closed == "the venv's directory" else elsewhere
    tmp_path.chmod(0o755)  # the stand-in, its log and the environment within reach
    venv.chmod(0o777)  # where it is writable (a shared checkout), --clear emptied it
    closed_dir.chmod(0)
    try:
        done = subprocess.run(
            [
                *prefix,
                "make",
                "--no-print-directory",
                "-C",
                str(ROOT),
                "setup",
                f"PYTHON_SYS={python}",
                f"VENV={venv}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_environment(),
        )
    finally:
        closed_dir.chmod(0o755)
    assert done.returncode != 0
    assert f"cannot read the environment {venv} (another user's?)" in done.stderr, done.stderr
    assert "make setup VENV=<new directory>" in done.stderr
    assert "-m venv" not in log.read_text()  # neither made over nor cleared
    assert (venv / "owner's work").read_text() == "kept" and (venv / "bin" / "python").is_symlink()


def test_a_venv_whose_python_is_gone_is_still_made_anew(tmp_path):
    """A dangling bin/python (its Python upgraded or removed) is no other user's: made anew, as before."""
    python, log = stand_in_python(tmp_path)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /gone\n")
    (venv / "bin" / "python").symlink_to(tmp_path / "gone" / "python3")
    done = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "setup", f"PYTHON_SYS={python}", f"VENV={venv}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_environment(),
    )
    assert done.returncode != 0  # the stand-in refuses to make it
    assert f"-m venv --clear {venv}\n" in log.read_text(), done.stderr
