"""Export of every registered translator: encoder/decoder ONNX parity and beam search over ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from export.pipeline import export_checkpoint
from export.triton_config import parse_pbtxt
from training.checkpoint import make_checkpoint, save_checkpoint
from training.models import build_model, list_models

TRANSLATORS = list_models("translate")
SMALL: dict[str, dict] = {
    "transformer": {"d_model": 16, "heads": 2, "ffn_dim": 32, "encoder_layers": 1, "decoder_layers": 2},
    "gru_attention": {
        "embed_dim": 8,
        "hidden_size": 16,
        "attention_dim": 16,
        "encoder_layers": 1,
        "decoder_layers": 1,
    },
    "lstm_attention": {
        "embed_dim": 8,
        "hidden_size": 16,
        "attention_dim": 16,
        "encoder_layers": 1,
        "decoder_layers": 1,
    },
}
VOCAB = 40
SENTENCES = [[5, 9, 12], [7, 8, 20, 31, 4, 6], [10], [33, 21, 17, 8]]


def test_every_registered_translator_has_small_export_settings():
    missing = sorted(set(TRANSLATORS) - set(SMALL))
    assert not missing, f"add export test settings for {missing}"


def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, models

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, VOCAB)}}
    return Tokenizer(models.WordLevel(vocab, unk_token="<unk>")).to_str()


@pytest.fixture(scope="module", params=TRANSLATORS or [pytest.param(None, marks=pytest.mark.skip(
    reason="no translator registered yet"))])  # fmt: skip
def exported(request, tmp_path_factory) -> tuple[str, Path, list]:
    name = request.param
    root = tmp_path_factory.mktemp(name)
    args = {
        "src_vocab_size": VOCAB,
        "tgt_vocab_size": VOCAB,
        "max_positions": 32,
        "dropout": 0.1,
        **SMALL[name],
    }
    torch.manual_seed(0)
    model = build_model(name, **args)
    tok = _tokenizer_json()
    ckpt = make_checkpoint(task="translate", model_name=name, model_args=args, model=model, train_config={},
                           metrics={}, tokenizers={"source": tok, "target": tok, "shared": True})  # fmt: skip
    path = save_checkpoint(ckpt, root / f"{name}.pt")
    return name, root / "repo", export_checkpoint(path, root / "repo", validation=SENTENCES, tensorrt="off")


def test_encoder_and_decoder_graphs_match_pytorch_at_several_batch_sizes_and_lengths(exported):
    name, repo, results = exported
    assert [r.status for r in results] == ["written"] * 3
    for entry in (f"{name}_encoder", f"{name}_decoder"):
        meta = json.loads((repo / entry / "kiln.json").read_text())
        assert meta["parity"]["passed"]
        assert len({tuple(sorted(c["sizes"].items())) for c in meta["parity"]["checks"]}) == 3
        assert max(d["max_abs_diff"] for d in meta["parity"]["outputs"].values()) <= 1e-4
        assert {c["sizes"]["batch"] for c in meta["parity"]["checks"]} == {1, 7, 64}
        parse_pbtxt((repo / entry / "config.pbtxt").read_text())


def test_beam_search_over_onnx_equals_the_pytorch_reference(exported):
    name, repo, results = exported
    meta = json.loads((repo / name / "kiln.json").read_text())
    assert meta["parity"]["beam_agreement"] == 1.0
    assert meta["parity"]["beam_sentences"] == len(SENTENCES)


def test_translator_entry_carries_tokenizers_step_spec_and_python_config(exported):
    name, repo, _ = exported
    meta = json.loads((repo / name / "kiln.json").read_text())
    assert meta["task"] == "translate"
    assert (
        meta["translator"]["encoder"] == f"{name}_encoder"
        and meta["translator"]["decoder"] == f"{name}_decoder"
    )
    assert meta["translator"]["step_spec"]["eos_id"] == 2
    assert (repo / name / meta["translator"]["source_tokenizer"]).is_file()
    config = parse_pbtxt((repo / name / "config.pbtxt").read_text())
    assert config.backend == "python" and config.max_batch_size > 0
    assert [i.name for i in config.input] == ["text"] and [o.name for o in config.output] == ["translation"]
    dec = json.loads((repo / f"{name}_decoder" / "kiln.json").read_text())
    assert dec["task"] == "translate_decoder" and dec["step_spec"] == meta["translator"]["step_spec"]


def test_translator_re_export_is_skipped_when_nothing_changed(exported):
    name, repo, _ = exported
    ckpt = repo.parent / f"{name}.pt"
    again = export_checkpoint(ckpt, repo, validation=SENTENCES, tensorrt="off")
    assert [r.status for r in again] == ["up to date"] * 3
