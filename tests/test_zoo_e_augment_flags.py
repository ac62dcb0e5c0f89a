"""``--hflip`` where augmentation is off: refused in one line, not dropped while the run records it."""

from __future__ import annotations

import pytest

from tests.test_resume_flags import resolved, resume_file
from training import classify_config


def test_hflip_with_no_augment_is_refused_naming_both_flags(tmp_path):
    with pytest.raises(ValueError, match=r"--hflip with augmentation off \(--no-augment\)"):
        resolved(["--model", "lenet", "--output-dir", str(tmp_path), "--no-augment", "--hflip"])


def test_hflip_on_resuming_a_run_without_augmentation_is_refused(tmp_path):
    resume = resume_file(tmp_path / "run", augment=False)
    with pytest.raises(ValueError, match="trained with --no-augment"):
        resolved(["--resume", str(resume), "--output-dir", str(tmp_path / "out"), "--hflip"])


def test_hflip_alone_adds_flips_to_the_datasets_augmentation(tmp_path):
    config = resolved(["--model", "lenet", "--output-dir", str(tmp_path), "--hflip"])
    assert classify_config.augment_config(config).hflip is True
    assert classify_config.augment_config(config).rotation_deg > 0


def test_no_augment_over_a_resumed_runs_flips_turns_them_off(tmp_path):
    resume = resume_file(tmp_path / "run", dataset="digits", hflip=True)
    config = resolved(["--resume", str(resume), "--output-dir", str(tmp_path / "out"), "--no-augment"])
    assert classify_config.augment_config(config).hflip is False
