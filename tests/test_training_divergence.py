"""Training that blows up (a learning rate far too high, a bad batch, fp16 overflow): both trainers stop
at the step it happens with one line naming it and what to try, write no checkpoint from the broken
weights, and export refuses a checkpoint holding NaN or inf weights."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from export.classifier import classifier_spec
from export.freeze import FreezeError, freeze
from export.parity import compare_outputs
from export.translator import _vocab_spec
from export.translator_feeds import random_source
from tests import test_train_translate
from tests.test_train_translate import TINY_ARGS, tiny_argv
from tests.torchrun import two_ranks
from training import classify, classify_epoch, classify_loop, translate, translate_loop, translate_setup
from training.classify_config import TrainConfig
from training.classify_resolve import resolve
from training.divergence import MIN_LOSS_SCALE, TrainingDiverged
from training.models import build_model
from training.resume import load_resume
from training.runtime import setup_dist
from training.tracking import EarlyStopping, read_metrics

TINY = ["--model", "lenet", "--image-size", "16", "--limit-train", "96", "--limit-val", "48"]
TINY += ["--batch-size", "32", "--no-progress", "--device", "cpu"]  # 3 steps an epoch


tsv = test_train_translate.tsv  # the tiny TSV corpus fixture, shared


def lenet_config(tmp_path, **overrides) -> TrainConfig:
    """``TINY`` as a config, for the tests that run the loop in this process."""
    fields = dict(model="lenet", image_size=16, limit_train=96, limit_val=48, batch_size=32, epochs=2)
    fields.update(progress=False, device="cpu", output_dir=str(tmp_path))
    return TrainConfig(**{**fields, **overrides})


def nan_from_call(real, call: int, value: float = math.nan):
    """``real`` whose result (a loss, or a ``(logits, losses)`` pair) is ``value`` from its ``call``-th
    call on."""
    calls = []

    def patched(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) < call:
            return out
        if isinstance(out, tuple):
            return out[0], out[1] * value
        return out * value

    return patched


def error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_a_classifier_whose_learning_rate_is_far_too_high_stops_and_leaves_the_last_checkpoint(
    tmp_path, capsys
):
    assert classify.main([*TINY, "--epochs", "1", "--output-dir", str(tmp_path)]) == 0
    good, records = (tmp_path / "lenet.pt").read_bytes(), read_metrics(tmp_path / "lenet.metrics.jsonl")
    capsys.readouterr()
    code = classify.main(
        [*TINY, "--epochs", "3", "--optimizer", "sgd", "--lr", "1e4", "--output-dir", str(tmp_path)]
    )
    assert code == 2
    [line] = error_lines(capsys)
    assert re.match(
        r"error: training diverged (at|in) epoch 1/3(, step \d/3)?: the (training loss|weights)", line
    )
    assert (
        "in a new run (--resume keeps these), try a lower --lr (this run's: 10000), or --clip-grad-norm 1"
        in line
    )
    assert (tmp_path / "lenet.pt").read_bytes() == good
    assert read_metrics(tmp_path / "lenet.metrics.jsonl") == records  # the good run's; none of NaN weights


def test_a_classifier_loss_that_turns_nan_at_a_step_stops_the_run_at_that_step(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(classify_epoch, "example_losses", nan_from_call(classify_epoch.example_losses, 5))
    code = classify.main([*TINY, "--epochs", "3", "--clip-grad-norm", "1", "--output-dir", str(tmp_path)])
    assert code == 2
    [line] = error_lines(capsys)
    assert line.startswith("error: training diverged at epoch 2/3, step 2/3: the training loss is nan;")
    assert line.endswith(
        "in a new run (--resume keeps these), try a lower --lr (this run's: 0.003)"
    )  # clipping is already on
    assert not (tmp_path / "lenet.pt").exists()
    assert [r["epoch"] for r in read_metrics(tmp_path / "lenet.metrics.jsonl")] == [1]
    resume = load_resume(str(tmp_path / "lenet.pt"))
    assert resume["epoch"] == 1 and all(torch.isfinite(v).all() for v in resume["model"].values())


def test_an_infinite_input_batch_stops_the_classifier_with_nan_or_inf_named(tmp_path, monkeypatch):
    real = classify_epoch.normalize
    calls = []

    def infinite_second_batch(x, mean, std):
        calls.append(1)
        out = real(x, mean, std)
        return out.fill_(math.inf) if len(calls) == 2 else out

    monkeypatch.setattr(classify_epoch, "normalize", infinite_second_batch)
    with pytest.raises(TrainingDiverged, match=r"at epoch 1/2, step 2/3: the training loss is (nan|inf)"):
        classify.train(lenet_config(tmp_path))
    assert not (tmp_path / "lenet.pt").exists()


def test_weights_that_go_nan_after_a_steps_finite_loss_are_never_kept_as_the_best(tmp_path, monkeypatch):
    """The last step of epoch 2 leaves a NaN weight though its loss was finite: validation stops the run
    before the epoch is logged, kept as the best or saved for --resume."""
    real, steps = classify_epoch.optimizer_step, []

    def poisoning(scaler, optimizer, *args):
        stepped = real(scaler, optimizer, *args)
        steps.append(1)
        if len(steps) == 6:
            optimizer.param_groups[0]["params"][0].data.view(-1)[0] = math.nan
        return stepped

    monkeypatch.setattr(classify_epoch, "optimizer_step", poisoning)
    with pytest.raises(TrainingDiverged, match=r"in epoch 2/3: the weights hold NaN or inf \("):
        classify.train(lenet_config(tmp_path, epochs=3, augment=False))
    assert [r["epoch"] for r in read_metrics(tmp_path / "lenet.metrics.jsonl")] == [1]
    resume = load_resume(str(tmp_path / "lenet.pt"))
    assert resume["epoch"] == 1 and resume["best_epoch"] == 1
    assert all(torch.isfinite(v).all() for v in resume["best_state"].values() if v.is_floating_point())


def test_fp16_steps_the_scaler_skips_are_neither_counted_in_the_loss_nor_a_stop(tmp_path, monkeypatch):
    """The classifier's loop with a GradScaler (fp16's, here the CPU's), which skips the step whose loss
    is inf (the weights never see that batch) and lowers its scale."""
    d = setup_dist("cpu")
    run = classify_loop.prepare(resolve(lenet_config(tmp_path)), d)
    run.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    calls, real = [], classify_epoch.example_losses

    def one_inf_batch(*args):
        logits, losses = real(*args)
        calls.append(1)
        return (logits, losses * math.inf) if len(calls) == 2 else (logits, losses)

    monkeypatch.setattr(classify_epoch, "example_losses", one_inf_batch)
    history = classify_loop.fit(run)
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in history)
    assert run.scaler.get_scale() == 2.0**7  # halved once, at the skipped step
    assert run.scheduler.last_epoch == 5  # 6 batches, one skipped: the schedule waited


@pytest.mark.parametrize("name", sorted(TINY_ARGS))
def test_a_translator_loss_that_turns_nan_stops_at_that_step_and_leaves_the_last_checkpoint(
    name, tsv, tmp_path, capsys, monkeypatch
):
    (tmp_path / "tiny.pt").write_bytes(b"the previous good checkpoint")
    monkeypatch.setattr(translate_loop, "loss_on", nan_from_call(translate_setup.loss_on, 3))
    assert translate.main(tiny_argv(name, tsv, tmp_path, "--epochs", "2", "--no-progress")) == 2
    [line] = error_lines(capsys)
    assert line.startswith("error: training diverged at epoch 1/2, step 3/")
    assert ": the training loss is nan; stopped without writing a checkpoint" in line
    assert line.endswith("in a new run (--resume keeps these), try a lower --lr (this run's: 0.003)")
    assert (tmp_path / "tiny.pt").read_bytes() == b"the previous good checkpoint"
    assert not (tmp_path / "tiny.curves.png").exists()


def test_a_transformer_whose_learning_rate_is_far_too_high_stops_naming_lr_and_clipping(
    tsv, tmp_path, capsys
):
    argv = tiny_argv("transformer", tsv, tmp_path, "--epochs", "2", "--no-progress")
    argv += ["--lr", "1e6", "--clip-norm", "0", "--warmup-steps", "0"]
    assert translate.main(argv) == 2
    [line] = error_lines(capsys)
    assert line.startswith("error: training diverged at epoch 1/2, step ")
    assert line.endswith(
        "in a new run (--resume keeps these), try a lower --lr (this run's: 1e+06), or --clip-norm 1"
    )
    assert not (tmp_path / "tiny.pt").exists() and read_metrics(tmp_path / "tiny.metrics.jsonl") == []


def test_translator_weights_that_go_nan_are_never_validated_into_the_best(tsv, tmp_path, monkeypatch):
    """The first validation takes any BLEU (a NaN model's 0) as the best: it must not see NaN weights."""
    real = translate_loop.optimizer_step

    def poisoning(scaler, optimizer, *args):
        stepped = real(scaler, optimizer, *args)
        optimizer.param_groups[0]["params"][0].data.view(-1)[0] = math.inf
        return stepped

    monkeypatch.setattr(translate_loop, "optimizer_step", poisoning)
    # a finite loss all the same: the step's own check is not what this test is about
    monkeypatch.setattr(translate_loop, "loss_on", lambda *args: translate_setup.loss_on(*args).nan_to_num())
    argv = tiny_argv("gru_attention", tsv, tmp_path, "--epochs", "2", "--no-progress", "--eval-every", "2")
    with pytest.raises(TrainingDiverged, match=r"at epoch 0\.\d+, step 2: the weights hold NaN or inf \("):
        translate.train(argv)
    assert not (tmp_path / "tiny.pt").exists() and read_metrics(tmp_path / "tiny.metrics.jsonl") == []


def test_an_fp16_skipped_step_is_left_out_of_the_logged_loss_and_the_run_goes_on(tsv, tmp_path, monkeypatch):
    monkeypatch.setattr(translate_loop, "loss_on", inf_once(translate_setup.loss_on, 2))
    path = translate.train(
        tiny_argv(
            "transformer", tsv, tmp_path, "--epochs", "1", "--no-progress", "--amp", "fp16", "--device", "cpu"
        )
    )
    assert path.is_file()
    [record] = read_metrics(tmp_path / "tiny.metrics.jsonl")
    assert math.isfinite(record["train_loss"])


def inf_once(real, call: int):
    """``real`` whose ``call``-th result alone is inf (a batch that overflows float16)."""
    calls = []

    def patched(*args):
        calls.append(1)
        return real(*args) * (math.inf if len(calls) == call else 1.0)

    return patched


def test_fp16_overflow_at_every_step_stops_once_the_loss_scale_collapses(tsv, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(translate_loop, "loss_on", nan_from_call(translate_setup.loss_on, 1, math.inf))
    argv = tiny_argv("transformer", tsv, tmp_path, "--epochs", "9", "--no-progress", "--amp", "fp16")
    argv += ["--device", "cpu", "--batch-size", "16", "--clip-norm", "0"]
    assert translate.main(argv) == 2
    [line] = error_lines(capsys)
    where = re.search(r"at epoch (\d+)/9, step (\d+)/(\d+): the fp16 loss scale fell to ", line)
    epoch, step, per_epoch = map(int, where.groups())
    halvings = math.ceil(math.log2(2.0**16 / MIN_LOSS_SCALE))  # from GradScaler's initial 2**16
    assert (epoch - 1) * per_epoch + step == halvings == 30
    assert line.endswith(
        "in a new run (--resume keeps these), try a lower --lr (this run's: 0.003), or --clip-norm 1, or --amp bf16"
    )
    assert not (tmp_path / "tiny.pt").exists()


def test_early_stopping_never_takes_nan_as_the_best():
    stopper = EarlyStopping(2)
    assert [stopper.step(v) for v in (math.nan, 0.5, 0.6, math.nan, math.nan)] == [False] * 4 + [True]
    assert stopper.best == 0.6


def test_freezing_refuses_nan_weights_the_example_inputs_never_touch():
    """An embedding row of a token the freeze example lacks is NaN in none of its outputs, yet in every
    served translation holding the token: the weights themselves are checked."""
    sizes = {"embed_dim": 8, "hidden_size": 8, "attention_dim": 8}
    model = build_model("gru_attention", src_vocab_size=40, tgt_vocab_size=40, **sizes).eval()
    spec = _vocab_spec(model)
    src = random_source(spec, 2, 6, np.random.default_rng(1))
    unused = max(set(range(4, 40)) - set(src.flatten().tolist()))
    with torch.no_grad():
        model.src_embed.weight[unused] = math.nan
    tgt = torch.full((2, 3), spec["bos_id"], dtype=torch.int64)
    assert all(torch.isfinite(t).all() for t in model(src, tgt).flatten())  # the outputs look fine
    with pytest.raises(FreezeError, match=r"non-finite weights in \['src_embed.weight'\] \(1 tensors\)"):
        freeze(model, (src, tgt))


@pytest.mark.parametrize("atol", [1e-4, math.inf])
def test_parity_names_nan_in_pytorchs_own_output_at_any_tolerance(atol):
    spec = classifier_spec("m", {"input_size": [4, 4], "channels": 1, "mean": [0.5], "std": [0.25]}, 2)
    ref = {
        "logits": np.array([[np.nan, 1.0]], np.float32),
        "probabilities": np.array([[0.5, 0.5]], np.float32),
    }
    _, errors = compare_outputs(spec, ref, {k: v.copy() for k, v in ref.items()}, atol)
    assert errors == [
        "m.logits: PyTorch's own output holds 1 NaN values (the model overflows on these inputs): "
        "nothing to compare with"
    ]


RANK1_NAN = """
import math, os, sys
from training import classify, classify_epoch
real = classify_epoch.example_losses
calls = []
def rank1_nan(*args):
    logits, losses = real(*args)
    calls.append(1)
    nan = os.environ["RANK"] == "1" and len(calls) == 2
    return logits, losses * math.nan if nan else losses
classify_epoch.example_losses = rank1_nan
sys.exit(classify.main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_torchrun_ranks_stop_together_when_one_ranks_loss_turns_nan(tmp_path):
    """Rank 1 alone sees a NaN loss: rank 0 stops at the same step (it does not train on into a collective
    rank 1 has left, nor is it stopped by torchrun before its line is out); neither writes a checkpoint."""
    script = tmp_path / "rank1_nan.py"
    script.write_text(RANK1_NAN)
    out = tmp_path / "out"
    root = str(Path(__file__).resolve().parents[1])
    env = {"PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = two_ranks([str(script), *TINY, "--epochs", "2", "--output-dir", str(out)], tmp_path / "tr", env)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert lines == [
        "error: training diverged at epoch 1/2, step 2/2: the training loss is nan; stopped without writing "
        "a checkpoint from these weights; in a new run (--resume keeps these), try a lower --lr (this run's: 0.003), or --clip-grad-norm 1"
    ], done.stderr[-3000:]
    assert "exitcode  : 2 " in done.stderr  # the first rank out left through the error line's path
    assert done.stderr.count("Traceback") == 1 and "ChildFailedError" in done.stderr  # torchrun's report
    assert not (out / "lenet.pt").exists()
