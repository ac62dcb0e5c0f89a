"""The translation trainer end to end on a tiny generated TSV corpus, for every registered translator."""

from __future__ import annotations

import random

import pytest
import torch

from tests.torchrun import SLOW_RANK0_TIMEOUT_S, two_ranks_weights_hash
from training.checkpoint import load_checkpoint, rebuild_model
from training.data.numbers import generate_pairs
from training.data.text_batches import pad_ids
from training.data.tokenizer import TokenizerPair
from training.decoding import greedy_decode
from training.models import list_models
from training.runtime import Dist, show_progress
from training.tracking import read_metrics
from training.translate import main, resolve_config, train
from training.translate_flags import build_parser, parse_model_args
from training.translate_setup import held_out_pairs

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
    path = train(tiny_argv(name, tsv, tmp_path, "--epochs", "3"))
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
    assert cfg.model == "transformer" and cfg.lr == 0.01 and cfg.time_budget == 2.0
    assert cfg.model_args["heads"] == 8 and cfg.model_args["d_model"] == 128


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_model_args(["d_model"])
    assert parse_model_args(["dropout=0.2", "rnn_type=gru"]) == {"dropout": 0.2, "rnn_type": "gru"}
    with pytest.raises(ValueError, match="not a translator"):
        resolve_config(build_parser().parse_args(["--model", "nope"]))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--batch-size", "8", "--batch-tokens", "100"])


def test_flags_that_would_fail_after_training_are_error_lines_before_it(tsv, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    cases = {
        "--test-beam must be >= 1, got 0": ["--test-beam", "0"],
        "--max-decode-length must be >= 1, got 0": ["--max-decode-length", "0"],
        "--max-decode-length 300 is above the model's max_positions 256": ["--max-decode-length", "300"],
        "--lr must be > 0, got 0.0": ["--lr", "0"],
        "--epochs must be >= 1, got 0": ["--epochs", "0"],
        "--batch-size must be >= 1, got 0": ["--batch-size", "0"],
        "--label-smoothing must be in [0, 1), got 1.0": ["--label-smoothing", "1"],
        "--model-arg nosuch: not a field of transformer": ["--model-arg", "nosuch=1"],
        "is a file, not a directory": ["--output-dir", str(tmp_path / "file")],
    }
    for message, extra in cases.items():
        assert main(tiny_transformer_argv(tsv, tmp_path / "out", *extra)) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    argv = ["--batch-tokens", "0", "--output-dir", str(tmp_path / "out")]
    assert main(argv) == 2 and "--batch-tokens must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_relative_data_path_is_stored_absolute_in_each_of_its_parts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tsv = resolve_config(build_parser().parse_args(["--corpus", "tsv", "--data-path", "data/a.tsv"]))
    assert tsv.data_path == str(tmp_path / "data" / "a.tsv")
    pair = build_parser().parse_args(["--corpus", "parallel", "--data-path", "a.en,../b.fr"])
    assert resolve_config(pair).data_path == f"{tmp_path / 'a.en'},{tmp_path.parent / 'b.fr'}"


def test_progress_bars_are_off_with_no_progress_and_off_a_terminal(monkeypatch):
    assert resolve_config(build_parser().parse_args([])).progress is True
    assert resolve_config(build_parser().parse_args(["--no-progress"])).progress is False
    main_rank, other_rank = Dist(0, 2, torch.device("cpu")), Dist(1, 2, torch.device("cpu"))
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert show_progress(True, main_rank) and not show_progress(False, main_rank)
    assert not show_progress(True, other_rank)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert not show_progress(True, main_rank)


def test_pairs_longer_than_the_position_table_are_dropped_from_every_split(tsv, tmp_path):
    rng = random.Random(0)
    long_pairs = []
    for i in range(30):  # one word each (passes the word filter), hundreds of subword tokens
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(1200))
        long_pairs.append(f"{word}\tun{i}\n" if i % 2 else f"seven {i}\t{word}\n")
    corpus = tmp_path / "long.tsv"
    corpus.write_text(tsv.read_text() + "".join(long_pairs))
    argv = tiny_transformer_argv(corpus, tmp_path, "--epochs", "1")
    ckpt = load_checkpoint(train(argv))  # used to stop with IndexError: index 256 is out of bounds
    dropped = ckpt["data"]["too_long_pairs"]
    assert sum(dropped.values()) == 30 and dropped["train"] > 0
    assert sum(ckpt["data"][f"{split}_size"] for split in ("train", "valid", "test")) == 240
    assert len(held_out_pairs(ckpt, "test")) == ckpt["data"]["test_size"]


def test_the_steps_after_the_last_eval_every_validation_are_validated_at_the_end(tsv, tmp_path):
    path = train(tiny_transformer_argv(tsv, tmp_path, "--epochs", "1", "--eval-every", "5"))
    steps = load_checkpoint(path)["metrics"]["steps"]
    assert steps % 5 != 0  # else the test proves nothing
    records = read_metrics(tmp_path / "tiny.metrics.jsonl")
    assert len(records) == 1 + steps // 5 and records[-1]["epoch"] == 1


def tiny_argv(name: str, tsv, out, *extra: str) -> list[str]:
    """The trainer's flags for a tiny ``name`` on the TSV corpus, written to ``out``."""
    argv = ["--model", name, "--corpus", "tsv", "--data-path", str(tsv), "--batch-size", "32"]
    argv += ["--lr", "3e-3", "--warmup-steps", "5", "--vocab-size", "120", "--val-limit", "8"]
    argv += ["--test-beam", "2", "--max-decode-length", "12", "--threads", "1"]
    argv += ["--output-dir", str(out), "--name", "tiny", *extra]
    for arg in TINY_ARGS[name]:
        argv += ["--model-arg", arg]
    return argv


def tiny_transformer_argv(tsv, out, *extra: str) -> list[str]:
    return tiny_argv("transformer", tsv, out, *extra)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_training_on_cpu_lowers_the_loss_and_is_recorded(amp, tsv, tmp_path):
    path = train(tiny_transformer_argv(tsv, tmp_path, "--epochs", "2", "--device", "cpu", "--amp", amp))
    ckpt = load_checkpoint(path)
    assert ckpt["train_config"]["amp"] == amp and ckpt["metrics"]["device"] == "cpu"
    assert all(v.dtype == torch.float32 for v in ckpt["state_dict"].values() if v.is_floating_point())
    records = read_metrics(tmp_path / "tiny.metrics.jsonl")
    assert records[-1]["train_loss"] < records[0]["train_loss"]


def test_asking_for_cuda_on_a_machine_without_it_fails_early_with_a_clear_message(tsv, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from training.translate import main

    assert main(tiny_transformer_argv(tsv, tmp_path, "--device", "cuda")) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "tiny.metrics.jsonl").exists()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_torchrun_ranks_train_one_translator_share_validation_and_none_waits_out_rank_0s_test(tsv, tmp_path):
    """Two CPU ranks end with identical weights (checked inside two_ranks_weights_hash) and one metrics
    record, though rank 0's test evaluation outlasts the process group's timeout; each decoded half
    of the validation sentences."""
    texts = tmp_path / "texts"
    texts.mkdir()
    argv = tiny_transformer_argv(tsv, tmp_path / "out", "--epochs", "1", "--device", "cpu")
    two_ranks_weights_hash(  # rank 0's test evaluation outlasts the process group's timeout
        "training.translate",
        argv,
        tmp_path / "hashes",
        slow_rank0=f"training.translate_loop:evaluate={SLOW_RANK0_TIMEOUT_S + 3}",
        env={"KILN_TEST_TEXTS_LOG": str(texts)},
    )
    assert load_checkpoint(tmp_path / "out" / "tiny.pt")["metrics"]["world_size"] == 2
    assert len(read_metrics(tmp_path / "out" / "tiny.metrics.jsonl")) == 1
    # --val-limit 8: each rank decoded 4 of the validation sentences, rank 0 did not decode them alone
    assert [(texts / f"rank{r}.texts").read_text().split() for r in (0, 1)] == [["4"], ["4"]]
