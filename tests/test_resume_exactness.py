"""A resumed classifier run ends where the uninterrupted one does (weights, optimizer, schedule, best
weights, early stopping, records), whatever moment it was killed at; and any ``--seed`` trains."""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils.data import DistributedSampler

from tests.test_data_audit import Interrupted, interrupt_after_first_epoch
from training import classify, classify_epoch, classify_loop
from training.checkpoint import load_checkpoint
from training.classify_config import TrainConfig
from training.data.loader import stream_seed, train_batches
from training.tracking import read_metrics

TINY = {
    "model": "lenet",
    "image_size": 16,
    "limit_train": 64,
    "limit_val": 32,
    "batch_size": 16,
    "progress": False,
    "device": "cpu",
}
FROZEN = {"lr": 1e-12, "augment": False, "model_args": {"batch_norm": False}}  # accuracy cannot move
VOLATILE = ("time_s", "train_time_s", "output_dir", "resume")  # clocks, and where the files went


def run(tmp_path, **settings):
    return classify.train(TrainConfig(**TINY, **settings, output_dir=str(tmp_path)))


def cut_after_first_epoch(tmp_path, monkeypatch, **settings) -> str:
    with monkeypatch.context() as patch:
        interrupt_after_first_epoch(patch)
        with pytest.raises(Interrupted):
            run(tmp_path, **settings)
    return str(tmp_path / "lenet.pt")


def differences(a, b, path: str = "") -> list[str]:
    """Where two saved states differ (tensors bitwise), leaving out the ``VOLATILE`` keys."""
    if isinstance(a, torch.Tensor):
        return [] if isinstance(b, torch.Tensor) and torch.equal(a, b) else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - set(VOLATILE)
        return [d for k in sorted(keys, key=str) for d in differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def states(*dirs) -> list[dict]:
    return [torch.load(d / "lenet.resume.pt", weights_only=True) for d in dirs]


def test_a_run_resumed_after_its_first_epoch_ends_bitwise_where_the_uninterrupted_one_does(
    tmp_path, monkeypatch
):
    settings = {"epochs": 3, "label_smoothing": 0.1, "warmup_epochs": 0.5, "early_stopping": 5}
    settings |= {"augment": True, "hflip": True, "model_args": {"dropout": 0.3}}
    whole = run(tmp_path / "whole", **settings)
    resume = cut_after_first_epoch(tmp_path / "cut", monkeypatch, **settings)
    cut = run(tmp_path / "cut", **settings, resume=resume)
    assert differences(*states(tmp_path / "whole", tmp_path / "cut")) == []  # model, optimizer, schedule...
    assert differences(*(load_checkpoint(p) for p in (whole, cut))) == []
    records = [read_metrics(p.with_name("lenet.metrics.jsonl")) for p in (whole, cut)]
    assert differences(*records) == [] and [r["epoch"] for r in records[0]] == [1, 2, 3]


def test_a_run_killed_after_it_stopped_early_is_not_trained_on_when_resumed(tmp_path, monkeypatch):
    settings = {**FROZEN, "epochs": 6, "early_stopping": 2}
    whole = run(tmp_path / "whole", **settings)
    assert load_checkpoint(whole)["metrics"]["epochs"] == 3  # best at 1, then two epochs without gain
    with monkeypatch.context() as patch:  # killed after its last resume state, before its checkpoint
        patch.setattr(classify_loop, "finish", lambda *args: (_ for _ in ()).throw(Interrupted()))
        with pytest.raises(Interrupted):
            run(tmp_path / "cut", **settings)
    cut = run(tmp_path / "cut", resume=str(tmp_path / "cut/lenet.pt"))
    assert load_checkpoint(cut)["metrics"]["epochs"] == 3  # trained epochs 4 and 5 before
    assert differences(*(load_checkpoint(p) for p in (whole, cut))) == []
    assert differences(*states(tmp_path / "whole", tmp_path / "cut")) == []
    longer = run(tmp_path / "cut", resume=str(cut), early_stopping=4)  # more patience trains on
    assert load_checkpoint(longer)["metrics"]["epochs"] == 5


def test_a_lengthened_resumed_run_takes_its_first_step_at_the_new_schedules_rate(tmp_path, monkeypatch):
    run(tmp_path, epochs=2, augment=False)  # cosine to 0 over 2 epochs of 4 steps
    rates, step = [], classify_epoch.optimizer_step

    def spy(scaler, optimizer, *args):
        rates.append(optimizer.param_groups[0]["lr"])
        return step(scaler, optimizer, *args)

    monkeypatch.setattr(classify_epoch, "optimizer_step", spy)
    run(tmp_path, epochs=4, resume=str(tmp_path / "lenet.pt"))  # the same cosine laid over 4 epochs
    warmup, total, lr = 4, 16, 3e-3  # lenet's recipe: 1 epoch of warm-up, lr 3e-3
    first = lr * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * (8 - warmup) / (total - warmup)))).item()
    assert rates[0] == pytest.approx(first), rates[:3]  # was 0.0, the 2-epoch cosine's end
    assert rates[0] > rates[1] > 0


def test_a_finetuned_run_resumes_without_its_checkpoints_channels_given_again(tmp_path, monkeypatch):
    source = run(tmp_path / "source", epochs=1, augment=False)
    resume = cut_after_first_epoch(tmp_path / "tuned", monkeypatch, epochs=2, finetune=str(source))
    tuned = run(tmp_path / "tuned", resume=resume)  # "the data flags differ" (channels 1 vs unset)
    assert load_checkpoint(tuned)["metrics"]["epochs"] == 2


def test_resume_on_other_data_names_each_differing_flag_before_reading_the_data(tmp_path, monkeypatch):
    resume = cut_after_first_epoch(tmp_path, monkeypatch, epochs=2, seed=3)
    monkeypatch.setattr(classify_loop, "make_splits", lambda spec: pytest.fail("read the data"))
    expected = "--limit-val 16 (the interrupted run's: 32), --seed 0 (the interrupted run's: 3)"
    with pytest.raises(ValueError, match=re.escape(expected)):  # unset ones are the run's: given, they differ
        classify.train(
            TrainConfig(**{**TINY, "limit_val": 16}, seed=0, output_dir=str(tmp_path), resume=resume)
        )


def test_a_seed_in_the_upper_part_of_torchs_range_trains_and_smaller_ones_keep_their_order(tmp_path):
    seed = 1_733_400_000_000_000_000  # date +%s%N: its derived stream seeds passed 2**64 ("Overflow")
    assert load_checkpoint(run(tmp_path, epochs=1, seed=seed))["metrics"]["epochs"] == 1
    dataset = torch.arange(10)
    for world_size in (1, 2):
        assert train_batches(dataset, 4, epoch=3, seed=2**64 - 1, world_size=world_size)
    sampler = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=7)
    sampler.set_epoch(3)  # how the order was drawn before: unchanged
    order = torch.cat(train_batches(dataset, 3, epoch=3, seed=7, rank=1, world_size=2))
    assert order.tolist() == list(sampler)
    inside = [-(2**63), -1, 0, 2**64 - 1]
    assert [stream_seed(s) for s in inside] == inside
    assert [stream_seed(s) for s in (2**64, 2**64 + 5, -(2**63) - 1)] == [0, 5, 2**64 - 2**63 - 1]
