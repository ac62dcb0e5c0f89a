"""A classifier run interrupted under a Latin-1 locale by a Kiln that named class folders as the locale
decodes them (``cafÃ©`` for a folder ``café`` in UTF-8) resumes now that they are read as the UTF-8
their bytes hold, its classes named so from then on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_paths_and_encodings import ROOT, TINY
from tests.test_training_hangs_and_changed_data import write_class
from training import classify
from training.checkpoint import load_checkpoint, save_checkpoint
from training.resume import load_resume


def latin1_locale(where: Path) -> dict[str, str]:
    """The environment of a process under a Latin-1 locale made in ``where`` (``localedef``): Python
    names files in Latin-1 there, as it did on the servers whose locale was ``en_US.ISO-8859-1``."""
    if shutil.which("localedef"):
        made = ["localedef", "-i", "en_US", "-f", "ISO-8859-1", str(where / "en_US.ISO-8859-1")]
        subprocess.run(made, capture_output=True, check=False, timeout=60)
    if not (where / "en_US.ISO-8859-1" / "LC_CTYPE").is_file():
        pytest.skip("no Latin-1 locale can be made here (localedef, or its en_US and ISO-8859-1 sources)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "PYTHONUTF8", "PYTHONIOENC"))}
    env.update(LOCPATH=str(where), LC_ALL="en_US.ISO-8859-1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return env


def test_a_run_interrupted_under_a_latin1_locale_before_class_names_were_read_as_utf8_resumes(tmp_path):
    """Such a run recorded the Latin-1 reading of a UTF-8 folder name (``cafÃ©`` for ``café``): read
    as UTF-8 now, its classes were refused as changed ("2 class(es) added (café, 日本); 2 class(es) gone
    (cafÃ©, ...)")."""
    classes = ["a", "café", "日本"]
    for name in classes:
        write_class(tmp_path / "data", name, 5)
    out = tmp_path / "out"
    argv = [*TINY, "--data-path", str(tmp_path / "data"), "--epochs", "1", "--output-dir", str(out)]
    assert classify.main(argv) == 0
    path = out / "lenet.resume.pt"
    state = load_resume(str(path))
    assert state["contents"]["classes"] == classes
    state["contents"]["classes"] = [name.encode().decode("latin-1") for name in classes]  # as recorded
    save_checkpoint(state, path)
    (tmp_path / "locale").mkdir()
    resume = [sys.executable, "-m", "training.classify", "--resume", str(path), "--epochs", "2"]
    done = subprocess.run(resume, env=latin1_locale(tmp_path / "locale"), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode("latin-1")[-2000:]
    assert load_checkpoint(out / "lenet.pt")["labels"] == classes  # as read now, the run's own too
    assert load_resume(str(path))["contents"]["classes"] == classes
