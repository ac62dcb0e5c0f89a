"""A translator run given a ``--name`` with a folder in it (``--name runs/a``) writes every file of the
run under ``--output-dir/runs/a.*``: its curves went to ``runs/runs/a.curves.png`` (the checkpoint's
folder joined with the name again), where nothing looks for them; and ``--resume out/runs/a.resume.pt``
without ``--output-dir`` took ``out/runs`` for it, so the resumed run wrote ``out/runs/runs/a.*`` beside
the run it continued, whose resume state and checkpoint it never replaced."""

from __future__ import annotations

import shutil
from pathlib import Path

from training.checkpoint import load_checkpoint
from training.data.numbers import generate_pairs
from training.resume import resumed_output_dir
from training.tracking import read_metrics
from training.translate import train

RUN_FILES = [f"runs/a.{suffix}" for suffix in ("curves.png", "metrics.jsonl", "pt", "resume.pt")]


def _tiny_run(tmp_path: Path, out: Path) -> list[str]:
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{en}\t{fr}\n" for en, fr in generate_pairs(60, seed=3)), encoding="utf-8")
    argv = ["--corpus", "tsv", "--data-path", str(tsv), "--batch-size", "32", "--epochs", "1"]
    argv += ["--vocab-size", "60", "--val-limit", "2", "--test-beam", "1", "--max-decode-length", "4"]
    argv += ["--threads", "1", "--no-progress", "--output-dir", str(out), "--name", "runs/a"]
    for arg in ("d_model=8", "heads=2", "ffn_dim=8", "encoder_layers=1", "decoder_layers=1"):
        argv += ["--model-arg", arg]
    return argv


def _written(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def test_a_name_with_a_folder_puts_the_curves_beside_the_checkpoint_and_metrics(tmp_path):
    out = tmp_path / "out"
    assert train(_tiny_run(tmp_path, out)) == out / "runs" / "a.pt"
    assert _written(out) == RUN_FILES


def test_a_run_named_with_a_folder_resumes_over_its_own_files_where_it_is_or_moved(tmp_path):
    first = tmp_path / "first"
    train(_tiny_run(tmp_path, first))
    one_epoch = load_checkpoint(first / "runs" / "a.pt")["metrics"]["steps"]
    out = tmp_path / "moved"
    shutil.move(first, out)  # the run's recorded --output-dir is gone: found from the resume state
    path = train(["--resume", str(out / "runs" / "a.resume.pt"), "--epochs", "2", "--no-progress"])
    assert path == out / "runs" / "a.pt" and _written(out) == RUN_FILES
    assert load_checkpoint(path)["metrics"]["steps"] == 2 * one_epoch
    assert [r["epoch"] for r in read_metrics(out / "runs" / "a.metrics.jsonl")] == [1, 2]


def test_the_output_dir_of_a_resumed_run_is_the_one_holding_its_files(tmp_path):
    state = tmp_path / "out" / "runs" / "a.resume.pt"
    state.parent.mkdir(parents=True)
    state.touch()
    assert resumed_output_dir(state, "runs/a") == str(tmp_path / "out")
    assert resumed_output_dir(state.with_name("a.pt"), "runs/a") == str(tmp_path / "out")
    assert resumed_output_dir(state, "a") == str(state.parent)  # a new --name without folders
    inner = tmp_path / "out" / "inner"  # a --name ../runs/a: found where the run recorded it
    assert resumed_output_dir(state, "../runs/a", str(inner)) == str(inner)
    assert resumed_output_dir(state, "../runs/a", str(tmp_path / "gone")) == str(state.parent)
