"""A translator attempt torchrun restarts (``--max-restarts``) resumes by itself from the resume state its
own torchrun job's interrupted attempt wrote, as the classifier's does, ending where the uninterrupted
job ends; a resume state of another job under the same ``--name`` is never taken."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tests import test_train_translate
from tests.test_train_translate import tiny_argv
from tests.test_translator_resume import Interrupted, killed_in_epoch, same_run
from tests.torchrun import two_ranks
from tests.torchrun_restart import read_epochs
from training import translate
from training.checkpoint import load_checkpoint
from training.resume import RUN_ID_KEY, load_resume
from training.tracking import read_metrics

tsv = test_train_translate.tsv  # the tiny TSV corpus fixture, shared
ROOT = Path(__file__).resolve().parents[1]
RESTART_1 = "torchrun restart 1 (--max-restarts)"


def attempt(monkeypatch: pytest.MonkeyPatch, job: str, restarts: int) -> None:
    """This process is attempt ``restarts`` (0: the first) of torchrun job ``job``, in one process."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", job)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(restarts))


def test_a_restarted_attempt_resumes_its_own_jobs_run_and_ends_bitwise_where_the_job_would_have(
    tsv, tmp_path, monkeypatch, caplog
):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    attempt(monkeypatch, "job-b", 0)
    translate.train(tiny_argv("transformer", tsv, whole, "--epochs", "3", "--no-progress"))
    with monkeypatch.context() as patch:
        killed_in_epoch(patch, 2)
        with pytest.raises(Interrupted):
            translate.train(tiny_argv("transformer", tsv, cut, "--epochs", "3", "--no-progress"))
    attempt(monkeypatch, "job-b", 1)
    with caplog.at_level(logging.INFO):
        translate.train(tiny_argv("transformer", tsv, cut, "--epochs", "3", "--no-progress"))
    assert f"{RESTART_1}: the run resumes from {cut / 'tiny.resume.pt'}" in caplog.text
    assert "resuming tiny after epoch 1 of 3" in caplog.text
    same_run(whole, cut)
    assert load_resume(str(cut / "tiny.pt"), task="translate")[RUN_ID_KEY] == "job-b"


def test_a_restarted_attempt_starts_over_rather_than_take_another_jobs_resume_state(
    tsv, tmp_path, monkeypatch, caplog
):
    attempt(monkeypatch, "job-a", 0)
    translate.train(tiny_argv("transformer", tsv, tmp_path, "--epochs", "2", "--no-progress"))
    attempt(monkeypatch, "job-b", 1)  # job b's attempt died before its first epoch ended
    with caplog.at_level(logging.INFO):
        translate.train(tiny_argv("transformer", tsv, tmp_path, "--epochs", "2", "--no-progress"))
    assert f"{RESTART_1}: every process starts this run again from its command line: " in caplog.text
    assert "another run's resume state (torchrun run id job-a; this job's is job-b)" in caplog.text
    assert "resuming tiny" not in caplog.text
    assert [r["epoch"] for r in read_metrics(tmp_path / "tiny.metrics.jsonl")] == [1, 2]
    assert load_resume(str(tmp_path / "tiny.pt"), task="translate")[RUN_ID_KEY] == "job-b"


# ``python -m restarted <trainer args>``: the translator under torchrun, rank 1 of the first attempt
# killed (tests.torchrun_restart) at KILN_TEST_KILL_AT once KILN_TEST_KILL_AFTER exists, each rank
# appending ``<attempt> <epoch>`` to KILN_TEST_EPOCHS_LOG/rank<N>.epochs as it starts an epoch.
RESTARTED = """
import os, runpy, sys
from pathlib import Path

from tests.torchrun_restart import kill_rank1_once
from training import translate_loop

if "KILN_TEST_KILL_AT" in os.environ:
    kill_rank1_once(os.environ["KILN_TEST_KILL_AT"], Path(os.environ["KILN_TEST_KILL_AFTER"]))
epochs = Path(os.environ["KILN_TEST_EPOCHS_LOG"]) / f"rank{os.environ['RANK']}.epochs"
real = translate_loop.Trainer.train_epoch


def train_epoch(self, epoch):
    with epochs.open("a") as fh:
        fh.write(f"{os.environ['TORCHELASTIC_RESTART_COUNT']} {epoch}\\n")
    return real(self, epoch)


translate_loop.Trainer.train_epoch = train_epoch
sys.argv = ["training.translate", *sys.argv[1:]]
runpy.run_module("training.translate", run_name="__main__", alter_sys=True)
"""


def torchrun_job(tmp_path: Path, out: Path, kill: bool):
    """Three epochs of the tiny transformer on two CPU ranks under ``torchrun --standalone
    --max-restarts 1``, rank 1 killed in the second epoch if ``kill``; the folder of its epoch logs."""
    hooks, epochs = tmp_path / "hooks", tmp_path / "epochs"
    hooks.mkdir()
    epochs.mkdir()
    (hooks / "restarted.py").write_text(RESTARTED)
    env = {"PYTHONPATH": os.pathsep.join([str(hooks), str(ROOT)]), "KILN_TEST_EPOCHS_LOG": str(epochs)}
    if kill:  # once the first epoch's resume state is written: at a step of the second
        env.update(KILN_TEST_KILL_AT="training.translate_loop:optimizer_step")
        env.update(KILN_TEST_KILL_AFTER=str(out / "tiny.resume.pt"))
    argv = tiny_argv("transformer", tmp_path / "corpus.tsv", out, "--epochs", "3", "--no-progress")
    argv += ["--device", "cpu", "--debug-rank-hashes", str(out / "hashes")]
    done = two_ranks(
        ["-m", "restarted", *argv],
        tmp_path / "scratch",
        env,
        launcher=("--standalone", "--max-restarts", "1"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done, epochs


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_torchrun_rank_killed_mid_run_resumes_on_every_rank_and_ends_with_the_uninterrupted_weights(
    tsv, tmp_path
):
    for job in ("whole", "killed"):
        (tmp_path / job).mkdir()
        (tmp_path / job / "corpus.tsv").write_text(tsv.read_text())
    torchrun_job(tmp_path / "whole", tmp_path / "whole" / "out", kill=False)
    out = tmp_path / "killed" / "out"
    done, epochs = torchrun_job(tmp_path / "killed", out, kill=True)
    assert "exitcode: -9" in done.stderr and done.stderr.count(RESTART_1) == 1, done.stderr[-3000:]
    assert f"{RESTART_1}: the run resumes from {out / 'tiny.resume.pt'}" in done.stderr
    assert done.stderr.count("resuming tiny after epoch 1 of 3") == 1  # rank 0's line
    for rank in (0, 1):  # the restart trained the second and third epochs, not the first again
        assert read_epochs(epochs / f"rank{rank}.epochs") == {0: [0, 1], 1: [1, 2]}
    assert [r["epoch"] for r in read_metrics(out / "tiny.metrics.jsonl")] == [1, 2, 3]
    assert load_checkpoint(out / "tiny.pt")["metrics"]["world_size"] == 2
    hashes = [(tmp_path / job / "out" / "hashes" / "rank0.sha256").read_text() for job in ("whole", "killed")]
    assert hashes[0] == hashes[1]  # each rank's dropout draws and batches continued exactly
