"""A ``--name`` given with ``--resume`` is the resumed run's new name, and one whose checkpoint would be
a hidden file is refused there as for a new run: it was let through (only a new run's name was checked,
as if a resumed run's were always the interrupted run's), and ``--resume x.resume.pt --name runs/exp1/``
trained on into ``runs/exp1/.pt``, which ``ls`` does not show and export cannot name a model by. The
name a resumed run inherits is not checked again."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.test_ha_hidden_name import runs  # noqa: F401 - the fixture: the names of the runs let through
from tests.test_resume_flags import resume_file
from training import classify, translate, translate_config

HIDDEN = "the checkpoint would be '.pt', a hidden file"


def test_a_classifier_resumed_under_a_hidden_name_is_refused(
    tmp_path: Path,
    capsys,
    runs: list[str],  # noqa: F811 - test_ha_hidden_name's fixture
) -> None:
    state = resume_file(tmp_path / "out", name="net")
    assert classify.main(["--resume", str(state), "--name", "runs/exp1/"]) == 2
    err = capsys.readouterr().err
    assert f"--name 'runs/exp1/': {HIDDEN}" in err and err.count("\n") == 1 and runs == [], err
    assert classify.main(["--resume", str(state)]) == 0 and runs == ["net"]  # its own name: resumed


def test_a_translator_resumed_under_a_hidden_name_is_refused(
    tmp_path: Path,
    capsys,
    runs: list[str],  # noqa: F811 - test_ha_hidden_name's fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the interrupted run's settings as resumed_config reads them from its state (here: a new run's)
    def resumed(resume: str, given: dict) -> translate_config.TranslateConfig:
        inherited = {"name": "old", "output_dir": str(tmp_path), **given}
        return dataclasses.replace(translate_config.new_config(inherited), resume=resume)

    monkeypatch.setattr(translate, "resumed_config", resumed)
    monkeypatch.setattr(translate_config, "check_resumed_epochs", lambda resume, epochs: None)
    state = str(tmp_path / "old.resume.pt")
    assert translate.main(["--resume", state, "--name", "runs/exp1/", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--name 'runs/exp1/': {HIDDEN}" in err and err.count("\n") == 1 and runs == [], err
    assert translate.main(["--resume", state, "--no-progress"]) == 0 and runs == ["old"]
