"""Mixed precision, one ``--amp`` flag in both trainers, on the CPU as on CUDA: ``--amp bf16|fp16``, a bare
``--amp`` (fp16, what the classifier's switch meant), ``--no-amp``; the precision a classifier trained
with is recorded, kept on ``--resume`` (resume files of the old switch included) and exported as float32.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from training import classify, classify_epoch, classify_loop, divergence, mixed_precision, runtime
from training.checkpoint import load_checkpoint
from training.classify_resolve import resolve
from training.data.corpus import generate_pairs
from training.resume import load_resume
from training.translate import build_parser as translate_parser
from training.translate import main as translate_main
from training.translate import resolve_config

LENET = [
    "--model",
    "lenet",
    "--epochs",
    "1",
    "--limit-train",
    "64",
    "--limit-val",
    "32",
    "--image-size",
    "16",
]
LENET += ["--device", "cpu", "--no-progress"]
TINY_TRANSFORMER = ["d_model=32", "heads=2", "ffn_dim=64", "encoder_layers=1", "decoder_layers=1"]


def classifier_amp(*flags: str) -> str | None:
    return resolve(classify.to_config([*LENET, *flags])).amp


def translator_amp(*flags: str) -> str | None:
    return resolve_config(translate_parser().parse_args(["--model", "transformer", *flags])).amp


@pytest.mark.parametrize("amp_of", [classifier_amp, translator_amp], ids=["classify", "translate"])
def test_both_trainers_take_the_same_amp_flag_and_a_bare_amp_means_fp16(amp_of, capsys):
    assert amp_of("--amp", "bf16") == "bf16" and amp_of("--amp=fp16") == "fp16"
    assert amp_of("--amp") == "fp16"  # the classifier's old switch, as `make demo GPU=1` passes it
    assert amp_of() is None and amp_of("--amp", "bf16", "--no-amp") is None
    with pytest.raises(SystemExit):
        amp_of("--amp", "int8")
    assert "invalid choice: 'int8'" in capsys.readouterr().err


def test_a_config_holding_the_old_switch_means_fp16_or_float32():
    assert [mixed_precision.amp_choice(v) for v in (True, False, None, "bf16")] == [
        "fp16",
        None,
        None,
        "bf16",
    ]
    with pytest.raises(ValueError, match="unknown --amp 'fp8'"):
        mixed_precision.amp_choice("fp8")


def forward_dtypes(monkeypatch) -> list[torch.dtype]:
    """The dtype of the logits of every training forward the classifier runs from now on."""
    seen, real = [], classify_epoch.example_losses

    def spy(output, labels, smoothing):
        seen.append((output[0] if isinstance(output, tuple) else output).dtype)
        return real(output, labels, smoothing)

    monkeypatch.setattr(classify_epoch, "example_losses", spy)
    return seen


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_a_classifier_trains_under_cpu_autocast_and_its_checkpoint_records_the_precision(
    amp, tmp_path, monkeypatch
):
    seen = forward_dtypes(monkeypatch)
    assert classify.main([*LENET, "--amp", amp, "--output-dir", str(tmp_path)]) == 0
    assert seen and set(seen) == {mixed_precision.AMP_DTYPES[amp]}  # was float32: --amp ignored on the CPU
    ckpt = load_checkpoint(tmp_path / "lenet.pt")
    assert ckpt["train_config"]["amp"] == amp
    assert all(v.dtype == torch.float32 for v in ckpt["state_dict"].values() if v.is_floating_point())
    scaler = load_resume(str(tmp_path / "lenet.pt"))["scaler"]
    assert bool(scaler) is (amp == "fp16")  # fp16 steps through an enabled GradScaler, on the CPU too


def test_a_bf16_trained_classifier_exports_as_float32(tmp_path):
    from export.pipeline import export_checkpoint

    assert classify.main([*LENET, "--amp", "bf16", "--output-dir", str(tmp_path)]) == 0
    results = export_checkpoint(tmp_path / "lenet.pt", tmp_path / "repo", tensorrt="off")
    written = [r for r in results if r.status == "written"]  # beside TensorRT's "skipped" row
    assert [r.precision for r in written] == ["fp32"]
    assert written[0].max_abs_diff and all(diff < 1e-3 for diff in written[0].max_abs_diff.values())


def resume_file(tmp_path: Path, name: str, amp: object, scaler: dict) -> str:
    """A copy of a finished lenet run's resume state saying it trained with ``amp`` and ``scaler``."""
    state = torch.load(tmp_path / "lenet.resume.pt", weights_only=True)
    state["train_config"]["amp"], state["scaler"] = amp, scaler
    torch.save(state, tmp_path / f"{name}.resume.pt")
    return str(tmp_path / f"{name}.resume.pt")


def test_a_resumed_run_keeps_the_precision_it_trained_with_also_from_a_file_of_the_old_switch(tmp_path):
    assert classify.main([*LENET, "--output-dir", str(tmp_path)]) == 0
    fp16_scaler = torch.amp.GradScaler("cpu").state_dict()

    def resumed(name: str, amp: object, scaler: dict, *flags: str) -> str | None:
        config = classify.to_config(["--resume", resume_file(tmp_path, name, amp, scaler), *flags])
        return resolve(config).amp

    assert resumed("cuda_switch", True, fp16_scaler) == "fp16"  # the old --amp on CUDA trained in fp16
    assert resumed("cpu_switch", True, {}) is None  # ... and on a CPU, ignored: float32
    assert resumed("off_switch", False, {}) is None
    assert resumed("bf16", "bf16", {}) == "bf16"
    assert resumed("bf16_off", "bf16", {}, "--no-amp") is None  # a flag given wins, as --epochs does
    assert resumed("plain", None, {}, "--amp") == "fp16"


def test_an_fp16_loss_scale_that_collapses_on_the_cpu_stops_the_classifier_naming_bf16(tmp_path):
    config = resolve(classify.to_config([*LENET, "--amp", "fp16", "--output-dir", str(tmp_path)]))
    run = classify_loop.prepare(config, runtime.setup_dist("cpu"))
    assert run.amp.dtype is torch.float16 and run.scaler.is_enabled()
    run.scaler = torch.amp.GradScaler("cpu", init_scale=1.5 * divergence.MIN_LOSS_SCALE)
    with torch.no_grad():
        next(run.module.parameters()).fill_(1e30)  # float16 overflows: every step is skipped
    with pytest.raises(divergence.TrainingDiverged, match="the fp16 loss scale fell to") as caught:
        classify_epoch.train_epoch(run, 0)
    assert str(caught.value).endswith("or --amp bf16")


def test_an_autocast_dtype_the_device_cannot_run_is_refused_instead_of_training_in_float32():
    mixed_precision.check_autocast("cpu", torch.bfloat16, "--amp bf16")
    with pytest.raises(ValueError, match=r"--amp f64: torch's autocast does not run torch.float64 on cpu \("):
        mixed_precision.check_autocast("cpu", torch.float64, "--amp f64")


ONEDNN = (
    "could not create a primitive descriptor for the LSTM forward propagation primitive. Run workload with "
    "environment variable ONEDNN_VERBOSE=all to get additional diagnostic information."
)


def test_an_op_the_cpu_has_no_kernel_of_the_precision_for_is_one_error_naming_amp():
    amp = mixed_precision.make_amp("bf16", torch.device("cpu"))
    with pytest.raises(mixed_precision.AmpUnsupported) as caught, amp.autocast():
        raise RuntimeError(ONEDNN)
    assert str(caught.value).startswith("--amp bf16: this CPU has no bf16 kernel for an operation")
    assert "Run workload" not in str(caught.value) and "(AVX512-BF16 or AMX)" in str(caught.value)
    with pytest.raises(RuntimeError, match="something else"), amp.autocast():
        raise RuntimeError("something else")


def test_a_translator_whose_cpu_lacks_the_kernel_stops_with_one_line_and_status_2(
    tmp_path, capsys, monkeypatch
):
    """An LSTM under CPU autocast on a CPU without AVX512-BF16 (oneDNN's error, raised here by a fake step
    so the test does not depend on the machine): was a traceback."""
    from training import translate_loop

    def no_kernel(*args):
        raise RuntimeError(ONEDNN)

    monkeypatch.setattr(translate_loop, "loss_on", no_kernel)
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{en}\t{fr}\n" for en, fr in generate_pairs(120, seed=3)))
    argv = ["--corpus", "tsv", "--data-path", str(tsv), "--batch-size", "32", "--vocab-size", "120"]
    argv += ["--device", "cpu", "--amp", "bf16", "--output-dir", str(tmp_path), "--no-progress"]
    for arg in TINY_TRANSFORMER:
        argv += ["--model-arg", arg]
    assert translate_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --amp bf16: this CPU has no bf16 kernel")
    assert not (tmp_path / "transformer.pt").exists()


def test_a_bare_amp_runs_the_translators_forward_under_cpu_fp16_autocast(tmp_path, monkeypatch):
    from training import translate_loop

    seen, real = [], translate_loop.loss_on

    def spy(model, batch, smoothing):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return real(model, batch, smoothing)

    monkeypatch.setattr(translate_loop, "loss_on", spy)
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{en}\t{fr}\n" for en, fr in generate_pairs(64, seed=3)))
    argv = ["--corpus", "tsv", "--data-path", str(tsv), "--batch-size", "32", "--vocab-size", "120"]
    argv += ["--device", "cpu", "--amp", "--epochs", "1", "--val-limit", "4", "--test-beam", "1"]
    argv += ["--max-decode-length", "8", "--output-dir", str(tmp_path), "--no-progress"]
    for arg in TINY_TRANSFORMER:
        argv += ["--model-arg", arg]
    assert translate_main(argv) == 0
    assert seen and set(seen) == {torch.float16}  # a bare --amp: fp16
    assert load_checkpoint(tmp_path / "transformer.pt")["train_config"]["amp"] == "fp16"
    assert not math.isnan(load_checkpoint(tmp_path / "transformer.pt")["metrics"]["best_val_bleu"])
