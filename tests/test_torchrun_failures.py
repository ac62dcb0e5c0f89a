"""How the trainers meet torchrun's failure modes: a rank killed mid-run under ``--max-restarts`` (the
restarted attempt must join a process group and finish, saying what it does), and a shell with
a launcher's variables left over from another job (one clear line, not silence or a hang). The classifier's
killed rank is the restarted job of ``tests/test_torchrun_resume.py``, which checks it finishes: one
torchrun job for both files' checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.torchrun import two_ranks
from training import classify, runtime, translate
from training.checkpoint import load_checkpoint
from training.tracking import read_metrics

RESTARTED = "torchrun restart 1 (--max-restarts)"


def killed_once(tmp_path, launcher: tuple[str, ...], trainer: str, args: list[str], kill_at: str, after):
    """``trainer`` under torchrun (``launcher`` flags, one restart allowed), its rank 1 killed once at
    ``kill_at`` (``module:attr``) once ``after`` exists (tests.torchrun_restart), as an OOM killer or a
    preempted node ends a rank mid-epoch."""
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.update(KILN_TEST_KILL_AT=kill_at, KILN_TEST_KILL_AFTER=str(after))
    return two_ranks(
        ["-m", "tests.torchrun_restart", trainer, *args],
        tmp_path / "scratch",
        env,
        launcher=(*launcher, "--max-restarts", "1"),
    )


def test_a_process_reads_how_often_its_own_torchrun_agent_restarted_it():
    """The agent's count, not the job's: tests/test_torchrun_nodes.py for why no group is named by it."""
    assert runtime.restart_count({}) == 0 and runtime.restart_count({"TORCHELASTIC_RESTART_COUNT": "2"}) == 2


def test_a_world_size_left_over_without_a_launchers_other_variables_is_refused_naming_them():
    with pytest.raises(
        ValueError, match=r"WORLD_SIZE=2 is set but MASTER_ADDR, MASTER_PORT are not .*torchrun"
    ):
        runtime.check_launch({"WORLD_SIZE": "2", "RANK": "1"})
    with pytest.raises(ValueError, match="but RANK is not"):
        runtime.check_launch({"WORLD_SIZE": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"})
    runtime.check_launch({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "localhost", "MASTER_PORT": "1"})
    runtime.check_launch({"RANK": "3"})  # one process: a left-over RANK alone does no harm


def test_only_rank_0_reports_errors_unless_the_process_cannot_be_one_of_several():
    assert runtime.reports_errors({}) and runtime.reports_errors({"RANK": "0", "MASTER_ADDR": "h"})
    assert not runtime.reports_errors({"RANK": "1", "MASTER_ADDR": "h", "WORLD_SIZE": "2"})
    assert runtime.reports_errors({"RANK": "1"})  # left over from another job: no rank 0 would say it
    assert runtime.reports_errors({"RANK": "1", "MASTER_ADDR": "h"})  # no WORLD_SIZE: it trains alone
    assert runtime.reports_errors({"RANK": "1", "MASTER_ADDR": "h", "WORLD_SIZE": "two"})


@pytest.mark.parametrize("trainer", ["translate", "classify"])
def test_a_trainer_with_a_rank_left_over_from_another_job_says_why_it_stops(
    trainer, tmp_path, monkeypatch, capsys
):
    """It stopped with exit status 2 and printed nothing: the error line was rank 0's alone."""
    for name in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    model = {"translate": "transformer", "classify": "lenet"}[trainer]
    argv = ["--model", model, "--epochs", "1", "--output-dir", str(tmp_path), "--device", "cpu"]
    assert {"translate": translate, "classify": classify}[trainer].main(argv) == 2
    err = capsys.readouterr().err
    assert "error: WORLD_SIZE=2 is set but MASTER_ADDR, MASTER_PORT are not" in err
    assert "unset WORLD_SIZE and RANK" in err and not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_translator_rank_killed_mid_run_is_restarted_under_a_c10d_rendezvous_and_finishes(tmp_path):
    """The same restart under ``--rdzv-backend c10d --rdzv-endpoint localhost:0`` (a multi-node job's
    rendezvous) rather than ``--standalone``, for the other trainer: one record per epoch, not the
    killed attempt's beside the restart's."""
    corpus, out = tmp_path / "tiny.tsv", tmp_path / "out"
    corpus.write_text("".join(f"{n} things\t{n} choses\tid{n}\n" for n in range(240)))
    args = ["--model", "transformer", "--corpus", "tsv", "--data-path", str(corpus), "--batch-size", "32"]
    args += ["--vocab-size", "120", "--val-limit", "8", "--test-beam", "2", "--max-decode-length", "8"]
    args += ["--threads", "1", "--epochs", "2", "--device", "cpu", "--no-progress", "--output-dir", str(out)]
    args += [
        "--name",
        "tiny",
        "--model-arg",
        "d_model=16",
        "--model-arg",
        "heads=2",
        "--model-arg",
        "ffn_dim=32",
    ]
    args += ["--model-arg", "encoder_layers=1", "--model-arg", "decoder_layers=1"]
    launcher = ("--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", "--nnodes", "1")
    after = out / "tiny.resume.pt"  # the first epoch is over: killed in the second
    done = killed_once(
        tmp_path, launcher, "training.translate", args, "training.translate_loop:optimizer_step", after
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exitcode: -9" in done.stderr and done.stderr.count(RESTARTED) == 1
    assert [r["epoch"] for r in read_metrics(out / "tiny.metrics.jsonl")] == [1, 2]
    assert load_checkpoint(out / "tiny.pt")["metrics"]["world_size"] == 2
