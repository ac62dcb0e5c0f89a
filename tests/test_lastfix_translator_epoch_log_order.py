"""A translator run logs an epoch's end ("epoch N ... val BLEU ...") only once the resume state of that
epoch is written, as the classifier does: the line came before ``<name>.resume.pt`` was saved, so a run
stopped during the save (Ctrl-C; seconds for a big model) had logged an epoch that ``--resume`` trains
again."""

from __future__ import annotations

import logging

import pytest

from tests import test_train_translate
from tests.test_train_translate import tiny_argv
from training import translate, translate_loop

tsv = test_train_translate.tsv  # the tiny TSV corpus fixture, shared


class _Recorder(logging.Handler):
    def __init__(self, events: list[str]) -> None:
        super().__init__(logging.INFO)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("epoch "):
            self.events.append(f"log {message.split()[1]}")


@pytest.mark.parametrize(
    "flags", [[], ["--time-budget", "0.0001"]], ids=["every-epoch", "out-of-time-mid-epoch"]
)
def test_an_epochs_line_is_logged_after_its_resume_state_is_written(
    tsv, tmp_path, monkeypatch, flags
) -> None:
    events: list[str] = []
    real = translate_loop.Trainer.save_resume

    def save_resume(self, epoch, *args, **kwargs):
        real(self, epoch, *args, **kwargs)
        events.append(f"save {epoch}")

    monkeypatch.setattr(translate_loop.Trainer, "save_resume", save_resume)
    logger = logging.getLogger("training.translate")
    handler, level = _Recorder(events), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        translate.train(tiny_argv("transformer", tsv, tmp_path, "--epochs", "2", "--no-progress", *flags))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    lines = [i for i, event in enumerate(events) if event.startswith("log ")]
    assert lines, events
    for i in lines:  # each validation's line follows the resume state that holds it
        assert i > 0 and events[i - 1].startswith("save "), events
