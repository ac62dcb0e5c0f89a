"""Early stopping in the middle of an epoch (``--eval-every``): the run's resume state says it stopped, so
``--resume`` of the finished run trains nothing and touches no file, as README promises."""

from __future__ import annotations

from tests import test_train_translate
from tests.test_train_translate import tiny_argv
from tests.test_translator_resume import same_run
from training import translate, translate_loop
from training.resume import load_resume
from training.tracking import read_metrics

tsv = test_train_translate.tsv  # the tiny TSV corpus fixture, shared

# BLEU cannot move at this rate: with --eval-every 4, validations at steps 4 and 8 (7 steps an epoch), no
# gain at 8: stopped in the second epoch, between two resume states.
FROZEN = ["--lr", "1e-12", "--patience", "1", "--epochs", "3", "--no-progress"]


def test_a_run_stopped_early_mid_epoch_is_complete_when_resumed(tsv, tmp_path, monkeypatch):
    path = translate.train(tiny_argv("gru_attention", tsv, tmp_path, *FROZEN, "--eval-every", "4"))
    assert [r["epoch"] for r in read_metrics(tmp_path / "tiny.metrics.jsonl")] == [0.571, 1.143]
    state = load_resume(str(path), task="translate")
    assert (state["stop"], state["step"], state["records"]) == ("early_stopping", 8, 2)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    trained = []
    monkeypatch.setattr(translate_loop.Trainer, "train_epoch", lambda self, epoch: trained.append(epoch))
    assert translate.train(["--resume", str(path)]) == path
    assert trained == []  # before: epoch 2 was trained again and every file written over
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


def test_a_run_stopped_early_in_its_first_epoch_leaves_a_resume_state(tsv, tmp_path):
    """Before, it left none: ``--resume`` of the finished run failed with "no resume state"."""
    argv = [*FROZEN, "--eval-every", "3"]  # validations at steps 3 and 6 of the first epoch's 7
    path = translate.train(tiny_argv("gru_attention", tsv, tmp_path, *argv))
    assert len(read_metrics(tmp_path / "tiny.metrics.jsonl")) == 2
    assert load_resume(str(path), task="translate")["stop"] == "early_stopping"
    before = path.read_bytes()
    assert translate.train(["--resume", str(path)]) == path and path.read_bytes() == before


def test_a_run_stopped_early_mid_epoch_and_given_more_patience_ends_where_one_never_stopped_does(
    tsv, tmp_path
):
    """The resume state written at a stop mid-epoch records the batches trained in that epoch, and the
    resumed run goes on from the next one: the rest of that epoch is trained, bit for bit as by a run
    that never stopped (a state that counted the stopped epoch as whole would skip its rest)."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    translate.train(tiny_argv("gru_attention", tsv, whole, *FROZEN, "--eval-every", "4", "--patience", "0"))
    path = translate.train(tiny_argv("gru_attention", tsv, cut, *FROZEN, "--eval-every", "4"))
    assert load_resume(str(path), task="translate")["batches"] == 1  # stopped at step 8: 1 of epoch 2's 7
    translate.train(["--resume", str(path), "--patience", "0"])
    assert [r["epoch"] for r in read_metrics(cut / "tiny.metrics.jsonl")] == [
        0.571,
        1.143,
        1.714,
        2.286,
        2.857,
        3,
    ]
    same_run(whole, cut)
