"""``GPU`` and ``FRESH`` are switches: a value other than 1 (``GPU=yes``, ``FRESH=true``) was read as unset,
so ``make setup GPU=yes`` installed the CPU extra and ``make demo FRESH=true`` reused the checkpoints, with no
word. Read with ``make -n`` (nothing runs: ``VENV`` is an empty temp directory)."""

from __future__ import annotations

import shutil

import pytest

from tests.test_makefile_targets import ROOT, dry_run, make

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


@pytest.mark.parametrize(
    ("target", "variable", "value"),
    [("demo", "FRESH", "yes"), ("demo", "FRESH", "true"), ("setup", "GPU", "yes"), ("demo", "GPU", "on")],
)
def test_a_switch_set_to_anything_but_1_is_refused_before_anything_runs(tmp_path, target, variable, value):
    done = make(ROOT, "-n", target, f"{variable}={value}", f"VENV={tmp_path / 'venv'}", NVIDIA_DEVICES="x")
    assert done.returncode != 0
    assert f"{variable}={value}: {variable} takes 1" in done.stderr, done.stderr
    assert "pip" not in done.stdout and "kiln.demo" not in done.stdout


def test_a_switch_from_the_environment_is_named_as_such(tmp_path):
    done = make(ROOT, "-n", "setup", f"VENV={tmp_path / 'venv'}", GPU="yes")
    assert done.returncode != 0 and "GPU=yes (from the environment)" in done.stderr, done.stderr


@pytest.mark.parametrize("value", ["0", ""])
def test_a_switch_off_or_empty_is_still_off(tmp_path, value):
    words = dry_run(tmp_path, "demo", f"FRESH={value}", f"GPU={value}")
    assert "--fresh" not in words and "--gpu" not in words


def test_fresh_is_only_checked_where_demo_runs(tmp_path):
    assert make(ROOT, "-n", "clean", "FRESH=yes").returncode == 0
