"""``make bench PROFILE=<typo>``: refused by make itself before the bench's prerequisites install haproxy
(apt) and perf_analyzer (pip), read with ``make -n`` (nothing runs: ``VENV`` is an empty temp directory)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.options import PROFILES

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def dry_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``make -n`` in the checkout, without what an enclosing make or the caller's PROFILE would add."""
    env = {k: v for k, v in os.environ.items() if k not in {"PROFILE", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "-n", f"VENV={tmp_path / 'venv'}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize("profile", ["nope", "Quick", "quick full", ""])
def test_a_profile_the_bench_has_not_is_refused_before_anything_is_installed(tmp_path, profile):
    done = dry_run(tmp_path, "bench", f"PROFILE={profile}")
    assert done.returncode != 0
    assert "apt-get" not in done.stdout and "pip install" not in done.stdout, done.stdout
    assert f"make bench PROFILE={profile}: no such profile" in done.stderr
    assert "choose from quick full gpu" in done.stderr


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_of_the_bench_reaches_the_bench(tmp_path, profile):
    done = dry_run(tmp_path, "bench", f"PROFILE={profile}")
    assert done.returncode == 0, done.stderr
    assert f"-m bench --profile {profile} " in done.stdout


def test_the_makefiles_profiles_are_the_benchs():
    listed = re.search(r"^BENCH_PROFILES\s*:=(.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert listed is not None
    assert sorted(listed.group(1).split()) == sorted(PROFILES)


def test_other_targets_do_not_check_the_profile(tmp_path):
    done = dry_run(tmp_path, "export", "PROFILE=nope")
    assert done.returncode == 0, done.stderr
