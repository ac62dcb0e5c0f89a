"""The trainers' CUDA-only paths, exercised on a CPU where that is faithful: fp16 gradient scaling (a
``GradScaler`` on the CPU behaves as on CUDA), resuming with ``--amp`` turned on, and files a GPU run
wrote (their tensors tagged ``cuda:0``) read back, rebuilt and exported on a machine without CUDA."""

from __future__ import annotations

import warnings
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.serialization
from torch import nn

from export.pipeline import export_checkpoint
from tests.classifier_exports import tiny_images, write_checkpoint
from training import classify, classify_epoch, classify_loop, classify_resume, mixed_precision, runtime
from training.checkpoint import load_checkpoint, rebuild_model
from training.classify_config import TrainConfig
from training.classify_resolve import resolve
from training.data.numbers import generate_pairs
from training.resume import load_resume
from training.translate import resolve_config
from training.translate_flags import build_parser
from training.translate_loop import Trainer
from training.translate_setup import build_translator, prepare_data

LENET = {"model": "lenet", "image_size": 16, "limit_train": 96, "limit_val": 48, "batch_size": 32}
SCHEDULER_WARNING = "lr_scheduler.step()"


def overflow_first_backward(module: nn.Module) -> None:
    """The first backward's gradients come out infinite, as fp16 ones do when the scale is too high."""
    fired: list[bool] = []

    def hook(grad: torch.Tensor) -> torch.Tensor:
        if fired:
            return grad
        fired.append(True)
        return torch.full_like(grad, float("inf"))

    next(module.parameters()).register_hook(hook)


def lenet_config(out: Path, **overrides) -> TrainConfig:
    config = TrainConfig(**LENET, output_dir=str(out), progress=False, device="cpu", **overrides)
    return resolve(config)


def cuda_tagged(path: Path) -> Path:
    """Write ``path`` again as a CUDA run writes it: every storage tagged ``cuda:0`` (``torch.load``
    without ``map_location`` then needs a GPU)."""
    state = torch.load(path, weights_only=True)
    with mock.patch.object(torch.serialization, "location_tag", lambda storage: "cuda:0"):
        torch.save(state, path)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)
    return path


def test_a_step_the_scaler_skips_leaves_the_learning_rate_schedule_where_it_was():
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    scaler, before = torch.amp.GradScaler("cpu"), [p.detach().clone() for p in model.parameters()]
    overflow_first_backward(model)
    taken = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            optimizer.zero_grad()
            scaler.scale(model(torch.ones(2, 3)).sum()).backward()
            taken.append(
                mixed_precision.optimizer_step(scaler, optimizer, scheduler, model.parameters(), 1.0)
            )
    assert taken == [False, True, True] and scheduler.last_epoch == 2
    assert not any(SCHEDULER_WARNING in str(w.message) for w in caught)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_the_classifier_epoch_counts_only_the_optimizer_steps_its_scaler_took(tmp_path):
    run = classify_loop.prepare(lenet_config(tmp_path, epochs=1), runtime.setup_dist("cpu"))
    run.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # what --amp builds on CUDA
    overflow_first_backward(run.module)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        classify_epoch.train_epoch(run, 0)
    assert run.scaler.get_scale() == 512.0  # it backed off once: the first step was skipped
    assert run.scheduler.last_epoch == 96 // 32 - 1
    assert not any(SCHEDULER_WARNING in str(w.message) for w in caught)


def test_the_translator_step_under_fp16_on_cpu_holds_the_schedule_back_when_it_overflows(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{en}\t{fr}\n" for en, fr in generate_pairs(120, seed=3)))
    argv = ["--corpus", "tsv", "--data-path", str(tsv), "--batch-size", "32", "--vocab-size", "120"]
    argv += ["--device", "cpu", "--amp", "fp16", "--output-dir", str(tmp_path), "--no-progress"]
    for arg in ("d_model=32", "heads=2", "ffn_dim=64", "encoder_layers=1", "decoder_layers=1"):
        argv += ["--model-arg", arg]
    cfg = resolve_config(build_parser().parse_args(argv))
    corpus, tokenizers, examples = prepare_data(cfg)
    model, _ = build_translator(cfg, tokenizers)
    trainer = Trainer(cfg, model, tokenizers, corpus, examples, runtime.setup_dist("cpu"))
    assert trainer.amp.scaler.is_enabled() and trainer.amp.dtype is torch.float16
    overflow_first_backward(model)
    batches = iter(trainer.batches)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train_step(next(batches))
        assert trainer.sched.last_epoch == 0 and trainer.amp.scaler.get_scale() == 2.0**15
        trainer.train_step(next(batches))
    assert trainer.sched.last_epoch == 1 and trainer.step == 2
    assert not any(SCHEDULER_WARNING in str(w.message) for w in caught)


def test_resuming_with_fp16_scaling_a_run_that_trained_without_it_starts_a_fresh_scaler(tmp_path):
    classify.train(lenet_config(tmp_path, epochs=1))
    state = load_resume(str(tmp_path / "lenet.pt"))
    assert state["scaler"] == {}  # a disabled scaler's state: what a CPU or float32 run saves
    run = classify_loop.prepare(lenet_config(tmp_path, epochs=2), runtime.setup_dist("cpu"))
    run.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # --amp on CUDA: enabled
    classify_resume.restore(run, state)
    assert run.start_epoch == 1 and run.scaler.get_scale() == 1024.0
    run.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    classify_resume.restore(run, {**state, "scaler": {**run.scaler.state_dict(), "scale": 8.0}})
    assert run.scaler.get_scale() == 8.0  # a saved fp16 scaler is continued, not restarted


def test_a_resume_state_written_on_cuda_resumes_on_a_machine_without_it(tmp_path):
    classify.train(lenet_config(tmp_path, epochs=1))
    cuda_tagged(tmp_path / "lenet.resume.pt")
    path = classify.train(lenet_config(tmp_path, epochs=2, resume=str(tmp_path / "lenet.pt")))
    assert load_checkpoint(path)["metrics"]["epochs"] == 2


def test_a_checkpoint_written_on_cuda_rebuilds_and_exports_on_a_machine_without_it(tmp_path):
    path = cuda_tagged(write_checkpoint(tmp_path / "ckpt", "lenet"))
    model = rebuild_model(load_checkpoint(path))
    assert all(p.device.type == "cpu" for p in model.parameters())
    results = export_checkpoint(path, tmp_path / "repo", validation=tiny_images(), tensorrt="off")
    assert results and (tmp_path / "repo" / "lenet" / "1" / "model.onnx").is_file()
