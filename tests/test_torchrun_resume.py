"""A classifier attempt torchrun restarts (``--max-restarts``) after a rank died resumes by itself from the
resume state its own torchrun job's interrupted attempt wrote, every rank alike, instead of training the
finished epochs again; a resume state an earlier job left under the same ``--name`` is never taken."""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.torchrun import tiny_lenet, two_ranks
from tests.torchrun_restart import read_epochs
from training import runtime
from training.checkpoint import load_checkpoint, save_checkpoint
from training.resume import RUN_ID_KEY, load_resume, restart_resume
from training.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]
RESTART_1 = "torchrun restart 1 (--max-restarts)"
RESUMES = "the run resumes from"
STARTS_AGAIN = "every process starts this run again from its command line"
ALONE = runtime.Dist(0, 1, torch.device("cpu"))


@dataclass
class Job:
    """A finished torchrun job: its output, where its trainer wrote, and the epochs each attempt trained."""

    done: subprocess.CompletedProcess
    out: Path
    epochs: Path


def killed_once(tmp_path: Path, out: Path, epochs: int, after: Path) -> Job:
    """A lenet run under ``torchrun --standalone --max-restarts 1`` whose rank 1 SIGKILLs itself at its
    first optimizer step once ``after`` exists (tests.torchrun_restart), each rank logging its epochs."""
    log = tmp_path / "epochs"
    log.mkdir()
    env = {"PYTHONPATH": str(ROOT), "KILN_TEST_EPOCHS_LOG": str(log)}
    env.update(KILN_TEST_KILL_AT="training.classify_epoch:optimizer_step", KILN_TEST_KILL_AFTER=str(after))
    done = two_ranks(
        ["-m", "tests.torchrun_restart", "training.classify", *tiny_lenet(out, epochs)],
        tmp_path / "scratch",
        env,
        launcher=("--standalone", "--max-restarts", "1"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exitcode: -9" in done.stderr and done.stderr.count(RESTART_1) == 1, done.stderr[-3000:]
    return Job(done, out, log)


@pytest.fixture(scope="module")
def restarted_job(tmp_path_factory) -> Job:
    """Three epochs, rank 1 killed in the second, once the first epoch's resume state is written."""
    tmp = tmp_path_factory.mktemp("restarted")
    return killed_once(tmp, tmp / "out", 3, after=tmp / "out" / "lenet.resume.pt")


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_restarted_attempt_resumes_after_the_last_epoch_its_interrupted_attempt_finished(restarted_job):
    """Every rank of the restart trained the second and third epochs only, not the first again."""
    err, out = restarted_job.done.stderr, restarted_job.out
    for rank in (0, 1):
        assert read_epochs(restarted_job.epochs / f"rank{rank}.epochs") == {0: [0, 1], 1: [1, 2]}
    assert f"{RESTART_1}: {RESUMES} {out / 'lenet.resume.pt'}" in err
    assert err.count("resuming lenet after epoch 1 of 3") == 1  # rank 0's line
    records = read_metrics(out / "lenet.metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert load_checkpoint(out / "lenet.pt")["metrics"]["epochs"] == 3
    state = load_resume(str(out / "lenet.pt"))
    assert state["epoch"] == 3 and isinstance(state[RUN_ID_KEY], str) and state[RUN_ID_KEY] != "none"


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_classifier_rank_killed_mid_run_is_restarted_by_torchrun_and_the_run_finishes(restarted_job):
    """The restarted attempt failed to join its process group ("Gloo connectFullMesh failed ...
    Connection refused", or waited on a dead rank): torchrun's store held the killed attempt's
    addresses under the same group names. Now it joins a group of its own, and ends with one record per
    epoch, a checkpoint and a whole resume state (``killed_once`` checked the kill and the one restart;
    moved here from tests/test_torchrun_failures.py, whose own job of the same run it was)."""
    out = restarted_job.out
    assert [r["epoch"] for r in read_metrics(out / "lenet.metrics.jsonl")] == [1, 2, 3]
    ckpt = load_checkpoint(out / "lenet.pt")
    assert ckpt["metrics"]["epochs"] == 3 and ckpt["data"]["n_train"] == 128
    assert load_resume(str(out / "lenet.pt"))["epoch"] == 3


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_restarted_attempt_never_resumes_from_an_earlier_jobs_resume_state_under_its_name(
    restarted_job, tmp_path
):
    """A new job under the same --name, killed before its first epoch ended, found the earlier job's
    state after epoch 3 of 3: it starts over (all three epochs), saying whose state that was."""
    out = tmp_path / "out"
    shutil.copytree(restarted_job.out, out)
    earlier = load_resume(str(out / "lenet.resume.pt"))[RUN_ID_KEY]
    job = killed_once(tmp_path, out, 3, after=out / "lenet.resume.pt")  # there: killed at its first step
    for rank in (0, 1):
        assert read_epochs(job.epochs / f"rank{rank}.epochs") == {0: [0], 1: [0, 1, 2]}
    err = job.done.stderr
    assert f"{RESTART_1}: {STARTS_AGAIN}: no epoch of this job's interrupted attempt had finished" in err
    assert f"is another run's resume state (torchrun run id {earlier};" in err
    assert "resuming lenet" not in err
    assert [r["epoch"] for r in read_metrics(out / "lenet.metrics.jsonl")] == [1, 2, 3]
    assert load_resume(str(out / "lenet.pt"))[RUN_ID_KEY] not in (None, earlier)


def write_state(path: Path, run_id: str | None, world_size: int = 1, epoch: int = 2) -> Path:
    """A resume state holding what ``restart_resume`` reads: its epoch, world size and torchrun job."""
    state = dict.fromkeys(("model_name", "model_args", "model", "optimizer", "scheduler", "data"), {})
    state.update(epoch=epoch, world_size=world_size, **{RUN_ID_KEY: run_id})
    return save_checkpoint(state, path)


@pytest.fixture
def restart(monkeypatch):
    """This process is torchrun's first restart of job ``job-b``."""
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")


def test_only_a_job_unique_torchrun_run_id_names_a_job():
    assert runtime.run_id({"TORCHELASTIC_RUN_ID": "3f0c"}) == "3f0c"
    assert runtime.run_id({}) is None and runtime.run_id({"TORCHELASTIC_RUN_ID": "none"}) is None


def test_a_first_attempt_resumes_nothing_by_itself(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")
    assert restart_resume(write_state(tmp_path / "x.resume.pt", "job-b"), ALONE) is None


def test_a_restart_takes_the_resume_state_its_own_job_wrote(tmp_path, restart, caplog):
    path = write_state(tmp_path / "x.resume.pt", "job-b")
    with caplog.at_level(logging.WARNING):
        assert restart_resume(path, ALONE) == path
    assert f"{RESTART_1}: {RESUMES} {path}" in caplog.text


@pytest.mark.parametrize(
    ("run_id", "world_size", "job", "why"),
    [
        ("job-a", 1, "job-b", "another run's resume state (torchrun run id job-a; this job's is job-b)"),
        (None, 1, "job-b", "another run's resume state (torchrun run id none; this job's is job-b)"),
        ("job-b", 4, "job-b", "holds a run on 4 process(es), this attempt runs on 1"),
        (None, 1, "none", "torchrun's run id is 'none' (a rendezvous or --master-port given without"),
    ],
    ids=["another-job", "no-job-recorded", "other-world-size", "job-without-id"],
)
def test_a_restart_starts_over_from_a_resume_state_it_cannot_tell_is_its_own_jobs(
    run_id, world_size, job, why, tmp_path, restart, monkeypatch, caplog
):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", job)
    path = write_state(tmp_path / "x.resume.pt", run_id, world_size)
    with caplog.at_level(logging.WARNING):
        assert restart_resume(path, ALONE) is None
    assert f"{RESTART_1}: {STARTS_AGAIN}: " in caplog.text and why in caplog.text


def test_a_restart_with_no_resume_state_or_a_damaged_one_starts_over_and_says_why(tmp_path, restart, caplog):
    missing, damaged = tmp_path / "gone.resume.pt", tmp_path / "bad.resume.pt"
    damaged.write_bytes(b"not a zip archive")
    with caplog.at_level(logging.WARNING):
        assert restart_resume(missing, ALONE) is None and restart_resume(damaged, ALONE) is None
    assert f"had finished (no resume state at {missing})" in caplog.text
    assert f"the resume state at {damaged} cannot be read" in caplog.text


def _decide_with_own_count(rank: int, store_file: str, state: str, answers: str) -> None:
    """One rank of a two-process gloo group whose restart count is its rank (torchelastic counts a
    restart on the failed worker's node only): its ``restart_resume`` answer, written to ``answers``."""
    import os
    from datetime import timedelta

    import torch.distributed as dist

    os.environ.update(TORCHELASTIC_RESTART_COUNT=str(rank), TORCHELASTIC_RUN_ID="job-b")
    timeout = timedelta(seconds=20)
    dist.init_process_group(
        "gloo", init_method=f"file://{store_file}", rank=rank, world_size=2, timeout=timeout
    )
    try:
        found = restart_resume(Path(state), runtime.Dist(rank, 2, torch.device("cpu"), timeout))
        Path(answers, str(rank)).write_text(str(found))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_ranks_whose_restart_counts_differ_decide_together(tmp_path):
    """A healthy node's ranks read restart count 0 in a restarted group: they skipped the ranks'
    collective and the others waited in it until the group's timeout. Every rank takes part now."""
    state = write_state(tmp_path / "x.resume.pt", "job-b", world_size=2)
    answers = tmp_path / "answers"
    answers.mkdir()
    args = (str(tmp_path / "store"), str(state), str(answers))
    torch.multiprocessing.spawn(_decide_with_own_count, args=args, nprocs=2, join=True)
    assert {p.name: p.read_text() for p in answers.iterdir()} == {"0": str(state), "1": str(state)}
