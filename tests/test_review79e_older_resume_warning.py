"""An older Kiln's classifier resume state (no ``train_config``) names in its one warning every flag it does
not record that the run takes from elsewhere: it named ``--epochs`` and the optimizer's flags only, so an
``--amp fp16`` run resumed without ``--amp`` went on in float32 (and a ``--no-augment`` one augmented,
``--early-stopping`` off) with no word of it; and it said they all came from the model's recipe, where
``--clip-grad-norm``, ``--amp`` and the rest come from Kiln's defaults."""

from __future__ import annotations

import logging

from tests.test_resume_flags import resolved
from tests.test_upgrade_legacy_classify_resume import older_resume_file


def test_an_older_resume_state_warns_of_every_unrecorded_flag_the_run_inherits(tmp_path, caplog):
    out = tmp_path / "out"
    older_resume_file(out, "lenint")
    with caplog.at_level(logging.WARNING, logger="training.classify"):
        config = resolved(["--resume", str(out / "lenint.pt"), "--hflip"])
    assert config.name == "lenint" and config.amp is None
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for flag in ("--epochs", "--lr", "--amp", "--augment", "--early-stopping"):
        assert flag in warning, flag
    assert "--hflip" not in warning  # given again
    assert "the model's recipe or Kiln's defaults" in warning
