"""Audit of the model zoo and the training loops: defects found by running them, one test each."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training import classify, classify_epoch
from training.checkpoint import load_checkpoint, rebuild_model
from training.classify_config import TrainConfig
from training.models import build_model


def test_googlenet_with_auxiliary_classifiers_trains_and_its_aux_losses_count_three_tenths(tmp_path):
    config = TrainConfig(
        model="googlenet",
        image_size=16,
        limit_train=64,
        limit_val=32,
        batch_size=32,
        epochs=1,
        progress=False,
        augment=False,
        output_dir=str(tmp_path),
        model_args={"aux_logits": True, "width_mult": 0.0625},
    )
    ckpt = load_checkpoint(classify.train(config))
    assert ckpt["model"]["args"]["aux_logits"] is True
    assert rebuild_model(ckpt).eval()(torch.zeros(2, 1, 16, 16)).shape == (2, 10)

    logits, aux, labels = (
        torch.randn(4, 3),
        [torch.randn(4, 3), torch.randn(4, 3)],
        torch.tensor([0, 1, 2, 0]),
    )
    got_logits, loss = classify_epoch.training_loss((logits, aux), labels, 0.0)
    expected = F.cross_entropy(logits, labels) + 0.3 * sum(F.cross_entropy(a, labels) for a in aux)
    assert got_logits is logits and torch.allclose(loss, expected)


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("transformer", {"d_model": 15, "heads": 3}, "d_model must be even"),
        ("transformer", {"heads": 0}, "heads must be a positive integer"),
        ("transformer", {"decoder_layers": 0}, "decoder_layers must be a positive integer"),
        ("transformer", {"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ("gru_attention", {"encoder_layers": 0}, "encoder_layers must be a positive integer"),
        ("lstm_attention", {"hidden_size": 0}, "hidden_size must be a positive integer"),
    ],
)
def test_translator_configs_name_a_bad_size_instead_of_failing_in_the_first_forward(name, args, message):
    with pytest.raises(ValueError, match=message):
        build_model(name, src_vocab_size=20, tgt_vocab_size=20, **args)


def test_a_transformer_without_encoder_layers_is_still_allowed():
    model = build_model(
        "transformer", src_vocab_size=20, tgt_vocab_size=20, d_model=8, heads=2, encoder_layers=0
    )
    assert model(torch.tensor([[5, 6, 2]]), torch.tensor([[1, 5]])).shape == (1, 2, 20)


def test_the_translator_logs_the_training_loss_averaged_over_target_tokens(tmp_path, monkeypatch):
    from training import translate_loop
    from training.data.numbers import generate_pairs
    from training.tracking import read_metrics
    from training.translate import train

    tsv = tmp_path / "tiny.tsv"
    tsv.write_text("".join(f"{en}\t{fr}\n" for en, fr in generate_pairs(120, seed=3)))
    seen: list[tuple[float, int]] = []
    real = translate_loop.loss_on

    def recording(model, batch, smoothing):
        loss = real(model, batch, smoothing)
        seen.append((loss.item(), batch.n_tokens))
        return loss

    monkeypatch.setattr(translate_loop, "loss_on", recording)
    argv = ["--model", "transformer", "--corpus", "tsv", "--data-path", str(tsv), "--batch-size", "7"]
    argv += ["--epochs", "1", "--lr", "3e-3", "--vocab-size", "120", "--val-limit", "4", "--test-beam", "1"]
    argv += ["--max-decode-length", "8", "--threads", "1", "--output-dir", str(tmp_path), "--name", "tiny"]
    for arg in ["d_model=16", "heads=2", "ffn_dim=32", "encoder_layers=1", "decoder_layers=1"]:
        argv += ["--model-arg", arg]
    steps = load_checkpoint(train(argv))["metrics"]["steps"]
    assert len(seen) == steps
    per_token = sum(loss * n for loss, n in seen) / sum(n for _, n in seen)
    per_batch = sum(loss for loss, _ in seen) / len(seen)
    assert abs(per_token - per_batch) > 1e-3  # else the test proves nothing
    (record,) = read_metrics(tmp_path / "tiny.metrics.jsonl")
    assert record["train_loss"] == pytest.approx(per_token, abs=1e-4)
