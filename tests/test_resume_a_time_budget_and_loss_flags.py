"""``--resume`` of a translator its ``--time-budget`` stopped, and the loss and clipping flags a resumed
run keeps. A run out of time writes its resume state where it stopped, mid-epoch or at an epoch's
end (it used to keep the one of the epoch before, so ``--resume`` trained the steps after it again,
and a resumed run of the same budget spent its minutes retraining them to stop at about the same
place, rewriting the checkpoint); resumed with the same budget it is complete (one line, exit 0,
nothing written), and a larger ``--time-budget``, which counts the minutes it trained before, trains
on from the very batch it stopped at. ``--label-smoothing`` and ``--clip-norm`` (a classifier's
``--clip-grad-norm``) given with another value are refused like the other optimizer flags."""

from __future__ import annotations

import logging
import types
from pathlib import Path

import pytest

from tests import test_train_translate, test_translator_resume
from tests.test_resume_epochs_and_moves import files, no_data
from tests.test_resume_exactness import run
from tests.test_train_translate import tiny_argv
from training import classify, translate, translate_loop
from training.checkpoint import load_checkpoint
from training.resume import load_resume
from training.tracking import read_metrics

tsv = test_train_translate.tsv  # the tiny TSV corpus fixture, shared
interrupted = test_translator_resume.interrupted  # a tiny transformer's two epochs: checkpoint written
STEP_S = 6.0  # the seconds each training step takes on the clock the runs here read
FLAGS = ["--epochs", "4", "--patience", "0", "--no-progress"]  # 7 steps an epoch, 28 in all


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The trainer's clock advances ``STEP_S`` seconds a training step and stands still otherwise, so a
    ``--time-budget`` stops a run at a step known in advance; the steps trained, counted."""
    now, steps = [0.0], []
    monkeypatch.setattr(
        translate_loop, "time", types.SimpleNamespace(monotonic=lambda: now[0], perf_counter=lambda: 0.0)
    )
    real = translate_loop.Trainer.train_step

    def train_step(self, batch):
        now[0] += STEP_S
        steps.append(self.step + 1)
        return real(self, batch)

    monkeypatch.setattr(translate_loop.Trainer, "train_step", train_step)
    return steps


def state_of(out: Path) -> tuple[int, int, int, str | None]:
    """Where a run's resume state holds it: epochs, batches of the next, steps, why it stopped."""
    state = load_resume(str(out / "tiny.resume.pt"), task="translate")
    return state["epoch"], state["batches"], state["step"], state["stop"]


@pytest.mark.parametrize(
    ("budget", "where", "records"),
    [("0.95", (1, 3, 10, "time_budget"), [1, 1.429]), ("1.35", (2, 0, 14, "time_budget"), [1, 2.0])],
    ids=["mid-epoch", "at-an-epochs-end"],
)
def test_a_translator_out_of_time_resumes_where_it_stopped_complete_under_the_same_budget(
    budget, where, records, clock, tsv, tmp_path, monkeypatch, caplog
):
    """Stopped after step 10 (57 s spent at 6 s a step: 3 batches into epoch 2) or 14 (81 s: epoch 2's
    last batch): its resume state is there, not after epoch 1, whose resume state had the steps after
    it trained again."""
    checkpoint = translate.train(tiny_argv("transformer", tsv, tmp_path, *FLAGS, "--time-budget", budget))
    assert state_of(tmp_path) == where
    assert [r["epoch"] for r in read_metrics(tmp_path / "tiny.metrics.jsonl")] == records
    assert load_checkpoint(checkpoint)["metrics"]["steps"] == where[2]
    before, trained = files(tmp_path), len(clock)
    with monkeypatch.context() as patch, caplog.at_level(logging.INFO):
        no_data(patch)
        assert translate.main(["--resume", str(checkpoint)]) == 0  # the same budget: spent
    [line] = [r.getMessage() for r in caplog.records if "complete" in r.getMessage()]
    when = "in epoch 2" if where[1] else "after epoch 2"
    assert line == (
        f"tiny: the run is complete, nothing to train or write: it had stopped {when}, its --time-budget "
        f"of {float(budget):g} min spent and {checkpoint} holds its result; a larger --time-budget, or 0, "
        "trains on"
    )
    assert files(tmp_path) == before and len(clock) == trained
    translate.train(["--resume", str(checkpoint), "--time-budget", "0"])  # no limit: trains on from there
    assert clock[trained:] == list(range(where[2] + 1, 29))  # not one step trained twice
    assert state_of(tmp_path) == (4, 0, 28, None)
    after = [epoch for epoch in (2, 3, 4) if epoch > records[-1]]  # its validation at the stop kept
    assert [r["epoch"] for r in read_metrics(tmp_path / "tiny.metrics.jsonl")] == [*records, *after]


def test_a_larger_time_budget_counts_the_minutes_trained_before_and_a_checkpoint_lost_is_written(
    clock, tsv, tmp_path, monkeypatch
):
    """0.95 min stop it after step 10; resumed with 2 (120 s), it trains to step 21 (126 s): the 60 s
    trained before count. Killed before its checkpoint, the run resumed writes it, training nothing."""
    checkpoint = translate.train(tiny_argv("transformer", tsv, tmp_path, *FLAGS, "--time-budget", "0.95"))
    with monkeypatch.context() as patch:
        patch.setattr(translate_loop, "_save", lambda *args: (_ for _ in ()).throw(RuntimeError("killed")))
        with pytest.raises(RuntimeError, match="killed"):
            translate.train(["--resume", str(checkpoint), "--time-budget", "2"])
    assert state_of(tmp_path) == (3, 0, 21, "time_budget") and len(clock) == 21
    translate.train(["--resume", str(checkpoint), "--time-budget", "2"])
    assert len(clock) == 21 and load_checkpoint(checkpoint)["metrics"]["steps"] == 21


REFUSED = {
    "--label-smoothing 0.2 (the interrupted run's: 0.1)": ["--label-smoothing", "0.2"],
    "--clip-norm 0.0 (the interrupted run's: 1.0)": ["--clip-norm", "0"],
}


@pytest.mark.parametrize("message", sorted(REFUSED))
def test_a_translator_resumed_with_another_loss_or_clipping_is_refused_like_an_optimizer_flag(
    message, interrupted, tmp_path, monkeypatch, capsys
):
    no_data(monkeypatch)
    argv = ["--resume", str(interrupted), *REFUSED[message], "--output-dir", str(tmp_path)]
    assert translate.main(argv) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: --resume {interrupted}: {message}") and "leave these flags unset" in line
    assert list(tmp_path.iterdir()) == []
    same = ["--label-smoothing", "0.1", "--clip-norm", "1", "--epochs", "3"]  # the same values: taken
    cfg = translate.resolve_config(translate.build_parser().parse_args(["--resume", str(interrupted), *same]))
    assert (cfg.label_smoothing, cfg.clip_norm) == (0.1, 1.0)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--label-smoothing", "0.2"], "--label-smoothing 0.2 (the run used 0.05)"),
        (["--clip-grad-norm", "1"], "--clip-grad-norm 1.0 (the run used 0.0)"),
    ],
    ids=["label-smoothing", "clip-grad-norm"],
)
def test_a_classifier_resumed_with_another_loss_or_clipping_is_refused_like_an_optimizer_flag(
    flags, message, tmp_path, monkeypatch, capsys
):
    checkpoint = run(tmp_path / "lenet", epochs=1, label_smoothing=0.05, clip_grad_norm=0.0)
    no_data(monkeypatch)
    saved = load_resume(str(checkpoint))["train_config"]
    assert (saved["label_smoothing"], saved["clip_grad_norm"]) == (0.05, 0.0)
    assert classify.main(["--resume", str(checkpoint), *flags, "--epochs", "2", "--no-progress"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: --resume {checkpoint}: {message}: a resumed run continues with its own")
