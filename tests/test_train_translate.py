"""The translation trainer end to end on a tiny generated TSV corpus, for every registered translator."""

from __future__ import annotations

import pytest
import torch

from training.checkpoint import load_checkpoint, rebuild_model
from training.data.numbers import generate_pairs
from training.data.text_batches import pad_ids
from training.data.tokenizer import TokenizerPair
from training.decoding import greedy_decode
from training.models import list_models
from training.tracking import read_metrics
from training.translate import build_parser, held_out_pairs, parse_model_args, resolve_config, train

TINY_ARGS = {
    "transformer": ["d_model=32", "heads=2", "ffn_dim=64", "encoder_layers=1", "decoder_layers=1"],
    "gru_attention": ["embed_dim=16", "hidden_size=32", "attention_dim=16"],
    "lstm_attention": ["embed_dim=16", "hidden_size=32", "attention_dim=16"],
}


def test_every_registered_translator_is_trained_here():
    assert set(TINY_ARGS) == set(list_models("translate"))


@pytest.fixture(scope="module")
def tsv(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "tiny.tsv"
    path.write_text("".join(f"{en}\t{fr}\tid{i}\n" for i, (en, fr) in enumerate(generate_pairs(240, seed=3))))
    return path


@pytest.mark.parametrize("name", sorted(TINY_ARGS))
def test_a_tiny_tsv_corpus_trains_end_to_end_into_a_loadable_checkpoint(name, tsv, tmp_path):
    argv = ["--model", name, "--corpus", "tsv", "--data-path", str(tsv), "--epochs", "3", "--batch-size", "32",
            "--lr", "3e-3", "--warmup-steps", "5", "--vocab-size", "120", "--val-limit", "8", "--test-beam", "2",
            "--max-decode-length", "12", "--threads", "1", "--output-dir", str(tmp_path), "--name", "tiny"]  # fmt: skip
    for arg in TINY_ARGS[name]:
        argv += ["--model-arg", arg]
    path = train(argv)
    ckpt = load_checkpoint(path)
    assert ckpt["task"] == "translate" and ckpt["model"]["name"] == name
    assert {"test_bleu", "test_exact_match", "best_val_bleu"} <= set(ckpt["metrics"])
    assert ckpt["data"]["train_size"] + ckpt["data"]["valid_size"] + ckpt["data"]["test_size"] == 240
    test_pairs = held_out_pairs(ckpt, "test")  # rebuilt from the checkpoint alone, as export and bench do
    assert len(test_pairs) == ckpt["data"]["test_size"] and all(p[0] in tsv.read_text() for p in test_pairs)
    records = read_metrics(tmp_path / "tiny.metrics.jsonl")
    assert len(records) == 3 and records[-1]["train_loss"] < records[0]["train_loss"]
    assert (tmp_path / "tiny.curves.png").stat().st_size > 0
    model, tok = rebuild_model(ckpt), TokenizerPair.from_dict(ckpt["tokenizers"])
    src = pad_ids(tok.encode_source(["three hundred and forty-two"]))
    out = greedy_decode(model, src, max_length=12)
    assert len(out) == 1 and isinstance(tok.decode_target(out[0]), str)
    assert model.step_spec()["vocab_size"] == tok.tgt_vocab_size
    assert torch.equal(
        model.state_dict()[next(iter(ckpt["state_dict"]))], next(iter(ckpt["state_dict"].values()))
    )


def test_recipe_preset_and_command_line_are_layered_in_that_order():
    cfg = resolve_config(
        build_parser().parse_args(["--preset", "demo", "--lr", "0.01", "--model-arg", "heads=8"])
    )
    assert cfg["model"] == "transformer" and cfg["lr"] == 0.01 and cfg["time_budget"] == 2.0
    assert cfg["model_args"]["heads"] == 8 and cfg["model_args"]["d_model"] == 128


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_model_args(["d_model"])
    assert parse_model_args(["dropout=0.2", "rnn_type=gru"]) == {"dropout": 0.2, "rnn_type": "gru"}
    with pytest.raises(ValueError, match="not a translator"):
        resolve_config(build_parser().parse_args(["--model", "nope"]))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--batch-size", "8", "--batch-tokens", "100"])
