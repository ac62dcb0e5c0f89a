"""Numbers and runs the trainers get wrong only on some paths: a resumed run that forgot its early
stopping or changed its number of processes, a held-out split the position filter empties."""

from __future__ import annotations

import random

import pytest
import torch

from tests.test_data_audit import TINY as DATA_AUDIT_TINY
from tests.test_data_audit import Interrupted, interrupt_after_first_epoch
from training import classify
from training.checkpoint import load_checkpoint, save_checkpoint
from training.classify_config import TrainConfig
from training.classify_resolve import resolve
from training.data.numbers import generate_pairs
from training.optim import lr_multiplier
from training.tracking import read_metrics
from training.translate import main as translate_main

TINY = {key: value for key, value in DATA_AUDIT_TINY.items() if key != "lr"}  # the recipe's lr, or FROZEN's
TINY_TRANSFORMER = [
    f"--model-arg={arg}"
    for arg in ("d_model=32", "heads=2", "ffn_dim=64", "encoder_layers=1", "decoder_layers=1")
]
FROZEN = {"lr": 1e-12, "augment": False, "model_args": {"batch_norm": False}}  # accuracy cannot move


def interrupted_run(tmp_path, monkeypatch, **settings) -> str:
    """A classifier run killed after its first epoch; the path to resume it from."""
    with monkeypatch.context() as patch:
        interrupt_after_first_epoch(patch)
        with pytest.raises(Interrupted):
            classify.train(TrainConfig(**TINY, **settings, output_dir=str(tmp_path)))
    return str(tmp_path / f"{settings.get('name', 'lenet')}.pt")


def test_a_resumed_run_stops_early_where_the_uninterrupted_one_would(tmp_path, monkeypatch):
    whole = classify.train(
        TrainConfig(**TINY, **FROZEN, epochs=6, early_stopping=2, output_dir=str(tmp_path / "whole"))
    )
    assert load_checkpoint(whole)["metrics"]["epochs"] == 3  # best at 1, then two epochs without gain
    resume = interrupted_run(tmp_path / "cut", monkeypatch, **FROZEN, epochs=6, early_stopping=2)
    cut = classify.train(TrainConfig(**TINY, output_dir=str(tmp_path / "cut"), resume=resume))
    ckpt = load_checkpoint(cut)
    assert ckpt["metrics"]["epochs"] == 3, ckpt["metrics"]  # ran all 6 epochs: patience fell back to 0
    assert ckpt["train_config"]["early_stopping"] == 2
    off = TrainConfig(**TINY, output_dir=str(tmp_path / "cut"), resume=resume, early_stopping=0)
    assert resolve(off).early_stopping == 0  # a given value still wins
    assert resolve(TrainConfig(**TINY, output_dir=str(tmp_path))).early_stopping == 0


def test_a_resumed_run_continues_under_its_own_name_with_every_epochs_record(tmp_path, monkeypatch):
    resume = interrupted_run(tmp_path / "first", monkeypatch, epochs=2, name="custom")
    path = classify.train(TrainConfig(**TINY, output_dir=str(tmp_path / "first"), resume=resume))
    assert path.name == "custom.pt" and not path.with_name("lenet.pt").exists()  # was lenet.pt, 1 epoch
    assert load_checkpoint(path)["metrics"]["epochs"] == 2
    assert [r["epoch"] for r in read_metrics(path.with_name("custom.metrics.jsonl"))] == [1, 2]
    forked = TrainConfig(
        **TINY, epochs=3, name="longer", output_dir=str(tmp_path / "second"), resume=str(path)
    )  # another name and directory: the records of the epochs it continues still come along
    path = classify.train(forked)
    assert load_checkpoint(path)["metrics"]["epochs"] == 3
    assert [r["epoch"] for r in read_metrics(path.with_name("longer.metrics.jsonl"))] == [1, 2, 3]


def test_resuming_on_another_number_of_processes_is_refused_before_its_schedule_runs_out(
    tmp_path, monkeypatch
):
    resume = interrupted_run(tmp_path, monkeypatch, epochs=3)
    state_file = tmp_path / "lenet.resume.pt"
    state = torch.load(state_file, weights_only=True)
    assert state["world_size"] == 1
    # As if the first epoch had run under torchrun with 2 processes: each of them stepped half as often,
    # so this process's schedule would reach its end after two of the three epochs (lr 0 for the third).
    save_checkpoint({**state, "world_size": 2}, state_file)
    resumed = TrainConfig(**TINY, output_dir=str(tmp_path), resume=resume)
    with pytest.raises(
        ValueError, match=r"trained on 2 process\(es\), this one runs on 1.*--nproc_per_node 2"
    ):
        classify.train(resumed)
    assert torch.load(state_file, weights_only=True)["epoch"] == 1  # nothing trained
    save_checkpoint({k: v for k, v in state.items() if k != "world_size"}, state_file)  # an older file
    assert load_checkpoint(classify.train(resumed))["metrics"]["epochs"] == 3


def test_a_held_out_split_left_empty_by_the_position_filter_is_an_error_before_training(tmp_path, capsys):
    pairs = generate_pairs(200, seed=3)
    order = list(range(len(pairs)))
    random.Random(0).shuffle(order)  # split_pairs' order for seed 0: valid then test off the front
    rng = random.Random(1)
    for i in order[10:20]:  # every test pair gets a target hundreds of subword tokens long
        pairs[i] = (f"seven {i}", "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(1200)))
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("".join(f"{en}\t{fr}\n" for en, fr in pairs))
    argv = ["--corpus", "tsv", "--data-path", str(corpus), "--batch-size", "32", "--vocab-size", "120"]
    argv += ["--threads", "1", "--epochs", "1", "--no-progress", "--output-dir", str(tmp_path), "--name", "t"]
    argv += TINY_TRANSFORMER
    assert translate_main(argv) == 2  # was an IndexError in sacrebleu after the whole run, no checkpoint
    err = capsys.readouterr().err
    assert "no test pair fits the model's 256 positions (all 10 are longer)" in err, err
    assert not (tmp_path / "t.metrics.jsonl").exists()  # refused before the first step


def test_each_epochs_record_shows_the_learning_rate_its_last_step_used(tmp_path):
    path = classify.train(TrainConfig(**TINY, epochs=2, warmup_epochs=0.5, output_dir=str(tmp_path)))
    records = read_metrics(path.with_name("lenet.metrics.jsonl"))
    steps_per_epoch = 2  # 64 images in batches of 32
    schedule = {"schedule": "cosine", "warmup_steps": 1, "total_steps": 2 * steps_per_epoch}
    used = [3e-3 * lr_multiplier(epoch * steps_per_epoch - 1, **schedule) for epoch in (1, 2)]
    assert [r["lr"] for r in records] == pytest.approx(used)
    assert records[-1]["lr"] > 0  # was 0.0: the rate of a step after the last, which never ran


def test_the_checkpoints_best_epoch_is_the_epoch_of_a_logged_validation(tmp_path):
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("".join(f"{en}\t{fr}\n" for en, fr in generate_pairs(240, seed=3)))
    argv = ["--corpus", "tsv", "--data-path", str(corpus), "--batch-size", "32", "--vocab-size", "120"]
    argv += ["--threads", "1", "--epochs", "1", "--eval-every", "3", "--val-limit", "4"]
    argv += ["--max-decode-length", "8", "--test-beam", "1", "--lr", "3e-3", "--warmup-steps", "2"]
    argv += ["--no-progress", "--output-dir", str(tmp_path), "--name", "t", *TINY_TRANSFORMER]
    assert translate_main(argv) == 0
    best = load_checkpoint(tmp_path / "t.pt")["metrics"]["best_epoch"]
    records = read_metrics(tmp_path / "t.metrics.jsonl")
    assert best in [r["epoch"] for r in records], (best, records)  # was 0.42857142857142855 beside 0.429
