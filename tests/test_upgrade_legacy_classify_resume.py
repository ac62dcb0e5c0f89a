"""A classifier's resume state written by an older Kiln (before 2026-12-04: no ``train_config``, only its
data and model) resumed by this one: ``--resume out/lenint.pt`` of a run started with ``--name lenint
--epochs 8`` went on as ``lenet`` (the model's name), writing ``out/lenet.pt``, ``lenet.resume.pt`` and
``lenet.metrics.jsonl`` (over another run's checkpoint there, if one was) and silently training the
recipe's 20 epochs. It keeps its file's name now, and one warning names the flags the state does not
record (they come from the recipe unless given again)."""

from __future__ import annotations

import logging
from pathlib import Path

from tests.test_resume_flags import LENET_STATE, resolved
from training.checkpoint import save_checkpoint


def older_resume_file(out: Path, name: str) -> Path:
    """What an older Kiln's ``save_resume`` wrote for a lenet run named ``name``: no ``train_config``."""
    out.mkdir(parents=True, exist_ok=True)
    data = {"dataset": "digits", "data_path": None, "image_size": 32, "channels": 1, "seed": 0}
    return save_checkpoint({**LENET_STATE, "data": data}, out / f"{name}.resume.pt")


def test_an_older_resume_state_resumes_under_its_own_name_and_warns_of_its_unrecorded_flags(tmp_path, caplog):
    out = tmp_path / "out"
    older_resume_file(out, "lenint")
    (out / "lenet.pt").write_bytes(b"another run's checkpoint")
    with caplog.at_level(logging.WARNING, logger="training.classify"):
        config = resolved(["--resume", str(out / "lenint.pt")])
    assert (config.name, Path(config.output_dir)) == ("lenint", out)  # not lenet: beside its own files
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "older Kiln" in warning and "--epochs" in warning and "--lr" in warning


def test_an_older_resume_state_takes_the_name_and_flags_given_and_warns_of_none_given(tmp_path, caplog):
    out = tmp_path / "out"
    older_resume_file(out, "lenint")
    with caplog.at_level(logging.WARNING, logger="training.classify"):
        config = resolved(["--resume", str(out / "lenint.resume.pt"), "--epochs", "8"])
    assert (config.name, config.epochs) == ("lenint", 8)
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "--epochs" not in warning and "--batch-size" in warning
    config = resolved(["--resume", str(out / "lenint.pt"), "--name", "other", "--output-dir", str(out)])
    assert config.name == "other"
