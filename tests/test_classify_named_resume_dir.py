"""A classifier run named with a folder (``--name runs/a``) keeps its files under
``--output-dir/runs/a.*``; resumed from ``out/runs/a.resume.pt`` without ``--output-dir`` it took
``out/runs`` for it and wrote ``out/runs/runs/a.*``, beside the run it continued, whose resume state and
checkpoint it never replaced (the translator's trainer had the same fault)."""

from __future__ import annotations

from pathlib import Path

from tests.test_resume_flags import resolved, resume_file


def test_a_run_named_with_a_folder_resumes_in_the_output_dir_that_holds_its_files(tmp_path):
    out = tmp_path / "out"
    config = resolved(["--resume", str(resume_file(out, name="runs/a"))])
    assert config.name == "runs/a"
    assert Path(config.output_dir) == out  # its files: out/runs/a.*, not out/runs/runs/a.*


def test_a_run_named_without_a_folder_resumes_beside_its_resume_state(tmp_path):
    out = tmp_path / "out"
    config = resolved(["--resume", str(resume_file(out, name="b"))])
    assert Path(config.output_dir) == out
