"""Gaps the earlier training and export audits left: torchrun's train metrics, what ``--resume``
inherits, BatchNorm without running statistics in freeze, and decoder parity past short caches."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from export.freeze import FreezeError, freeze
from export.onnx_export import DecoderGraph, save_model
from export.parity import ParityReport
from export.pipeline import rebuild_checked
from export.translator import _vocab_spec, decoder_spec
from export.translator_feeds import random_source
from export.translator_parity import LONG_PAST, decoder_parity, long_encoder_cases
from tests.test_data_audit import TINY, Interrupted, interrupt_after_first_epoch
from tests.test_export_mutations import _late_bias
from training import classify, classify_epoch, classify_loop
from training.checkpoint import load_checkpoint
from training.classify_config import TrainConfig
from training.classify_resolve import resolve
from training.data.loader import train_batches
from training.runtime import Dist
from training.translate import main as translate_main

FROZEN_PLAIN = {"lr": 1e-12, "augment": False, "model_args": {"batch_norm": False}}  # per-example losses


def test_the_sampler_padding_marks_the_copies_so_each_example_counts_once_over_the_ranks():
    dataset = torch.utils.data.TensorDataset(torch.zeros(7))  # 7 over 3 ranks: 2 padding copies
    counted = []
    for rank in range(3):
        batches = train_batches(dataset, 3, epoch=1, seed=0, rank=rank, world_size=3)
        flat = torch.cat(batches)
        counted += flat[~classify_epoch.sampler_padding(7, rank, 3, 0, len(flat))].tolist()
    assert sorted(counted) == list(range(7))
    assert not classify_epoch.sampler_padding(7, 0, 1, 0, 7).any()


def test_under_two_processes_the_epochs_train_metrics_leave_the_sampler_padding_out(tmp_path, monkeypatch):
    tiny = {**TINY, **FROZEN_PLAIN, "limit_train": 5, "batch_size": 8}
    config = TrainConfig(**tiny, epochs=1, output_dir=str(tmp_path))
    run = classify_loop.prepare(resolve(config), Dist(0, 1, torch.device("cpu")))
    single_loss, single_acc = classify_epoch.train_epoch(run, 0)
    sums = []
    monkeypatch.setattr(classify_epoch, "all_sum", lambda values, d: sums.append(values) or values)
    monkeypatch.setattr(classify_epoch, "mean_over_ranks", lambda values, d: values)  # no group here
    for rank in (0, 1):  # each rank's share of a torchrun epoch: 3 examples, rank 1's last a copy
        run.dist = Dist(rank, 2, torch.device("cpu"))
        classify_epoch.train_epoch(run, 0)
    loss, correct, seen = (sum(column) for column in zip(*sums, strict=True))
    assert seen == 5  # was 6: the copy of rank 0's first example counted twice
    assert loss / seen == pytest.approx(single_loss, rel=1e-5)
    assert correct / seen == single_acc


def test_a_rank_whose_share_is_all_sampler_padding_trains_its_epoch(tmp_path, monkeypatch):
    """One training example on two processes: rank 1's only example is a copy, left out of its counts,
    and its progress bar divided by its zero examples (a ZeroDivisionError under torchrun)."""
    tiny = {**TINY, **FROZEN_PLAIN, "limit_train": 1, "batch_size": 8}
    config = TrainConfig(**tiny, epochs=1, output_dir=str(tmp_path))
    run = classify_loop.prepare(resolve(config), Dist(0, 1, torch.device("cpu")))
    own = []
    rank0 = [0.5, 1, 1]  # what the other rank adds in the all-reduce: its one real example
    monkeypatch.setattr(
        classify_epoch,
        "all_sum",
        lambda values, d: own.append(values) or [a + b for a, b in zip(values, rank0, strict=True)],
    )
    monkeypatch.setattr(classify_epoch, "mean_over_ranks", lambda values, d: values)  # no group here
    run.dist = Dist(1, 2, torch.device("cpu"))
    assert classify_epoch.train_epoch(run, 0) == (0.5, 1.0)
    assert own == [[0.0, 0, 0]]  # its copy trained on, counted nowhere


def interrupted_run(out, monkeypatch, **settings) -> str:
    """A classifier run killed after its first epoch; the path of its resume state."""
    with monkeypatch.context() as patch:
        interrupt_after_first_epoch(patch)
        with pytest.raises(Interrupted):
            classify.train(TrainConfig(**TINY, epochs=2, **settings, output_dir=str(out)))
    return str(out / "lenet.resume.pt")


DATA = {key: TINY[key] for key in ("image_size", "limit_train", "limit_val", "progress")}  # not inherited


def test_a_resumed_run_writes_beside_its_resume_state_without_an_output_dir(tmp_path, monkeypatch):
    resume = interrupted_run(tmp_path / "runs", monkeypatch)
    monkeypatch.chdir(tmp_path)
    path = classify.train(TrainConfig(**DATA, resume=resume))
    assert path == tmp_path / "runs" / "lenet.pt"  # was ./checkpoints/lenet.pt, apart from its records
    assert not (tmp_path / "checkpoints").exists()
    elsewhere = TrainConfig(resume=resume, output_dir=str(tmp_path / "elsewhere"))
    assert resolve(elsewhere).output_dir == str(tmp_path / "elsewhere")
    assert resolve(TrainConfig(model="lenet")).output_dir == "checkpoints"


def test_a_resumed_run_keeps_the_mixed_precision_it_was_started_with(tmp_path, monkeypatch):
    resume = interrupted_run(tmp_path, monkeypatch, amp="bf16")
    assert resolve(TrainConfig(resume=resume)).amp == "bf16"  # was float32 on CUDA
    assert resolve(classify.to_config(["--resume", resume, "--no-amp"])).amp is None
    plain = interrupted_run(tmp_path / "plain", monkeypatch)
    assert resolve(TrainConfig(resume=plain)).amp is None
    assert resolve(classify.to_config(["--resume", plain, "--amp"])).amp == "fp16"


@pytest.mark.parametrize("foldable", [True, False], ids=["after-a-conv", "after-a-relu"])
def test_freeze_refuses_a_batchnorm_without_running_statistics_naming_it(foldable):
    norm = nn.Sequential(nn.BatchNorm2d(4, track_running_stats=False))
    layers = [nn.Conv2d(3, 4, 3), norm] if foldable else [nn.Conv2d(3, 4, 3), nn.ReLU(), norm]
    with pytest.raises(FreezeError, match=r"track_running_stats=False\) in \['\d\.0'\].*each batch's own"):
        freeze(nn.Sequential(*layers), [torch.randn(2, 3, 8, 8)])  # was an AssertionError / TypeError


@pytest.fixture(scope="module")
def transformer_step(exported_translator_models) -> tuple[SimpleNamespace, Path]:
    """What decoder parity runs on for the session's exported tiny Transformer, and its decoder graph."""
    root, errors = exported_translator_models
    assert "transformer" not in errors, errors
    path = root / "checkpoints" / "transformer.pt"
    model = rebuild_checked(load_checkpoint(path), path)
    spec = _vocab_spec(model)
    src = random_source(spec, 2, 6, np.random.default_rng(1))
    frozen, _ = freeze(model, (src, torch.full((2, 3), spec["bos_id"], dtype=torch.int64)))
    decoder = decoder_spec("transformer", frozen, spec, 64)
    module = DecoderGraph(frozen, decoder.input_names, decoder.output_names)
    g = SimpleNamespace(spec=spec, frozen=frozen, decoder=decoder, decoder_module=module)
    return g, root / "model_repository" / "transformer_decoder" / "1" / "model.onnx"


def test_decoder_parity_reaches_the_longest_cache_and_source_the_model_takes(transformer_step):
    g, graph = transformer_step
    report = decoder_parity(g, graph, ParityReport(g.decoder.atol))
    longest = g.spec["max_positions"]
    assert report.passed
    sizes = [check["sizes"] for check in report.checks]
    assert {"batch": 2, "src_len": longest, "past_len": longest - 1} in sizes  # was 6 at most
    assert {LONG_PAST, longest // 2} <= {s["past_len"] for s in sizes}
    assert long_encoder_cases(g.spec) == ({"batch": 2, "src_len": longest},)


@pytest.mark.parametrize("first_wrong", [7, "last"])  # 7: one past the short cases
def test_a_decoder_wrong_only_past_the_short_caches_is_refused_by_decoder_parity(
    transformer_step, tmp_path, first_wrong
):
    g, graph = transformer_step
    first_wrong = g.spec["max_positions"] - 1 if first_wrong == "last" else first_wrong
    mutant = tmp_path / "decoder.onnx"
    save_model(_late_bias(onnx.load(str(graph)), first_wrong), mutant)
    errors = decoder_parity(g, mutant, ParityReport(g.decoder.atol)).errors
    assert errors and all(re.match(r"transformer_decoder\.log_probs: max abs diff", e) for e in errors)
    assert all(int(re.search(r"'past_len': (\d+)", e)[1]) >= first_wrong for e in errors), errors


def test_a_boolean_model_arg_spelled_false_is_refused_rather_than_read_as_true(tmp_path, capsys):
    argv = ["--model", "lenet", "--model-arg", "batch_norm=false", "--output-dir", str(tmp_path)]
    assert classify.main(argv) == 2  # was a run with BatchNorm on: the string 'false' is truthy
    assert "--model-arg batch_norm='false': a boolean field takes True or False" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    config = classify.to_config(["--model", "lenet", "--model-arg", "batch_norm=False"])
    assert resolve(config).model_args == {"batch_norm": False}
    assert translate_main(["--model-arg", "share_embeddings=false", "--output-dir", str(tmp_path)]) == 2
    assert "share_embeddings='false': a boolean field" in capsys.readouterr().err
