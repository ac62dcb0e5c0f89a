"""The int8 gate and beam parity run on the run's held-out test split: a corpus that changed since
training (grown by a few lines, or another file given as --data-path) reshuffles the split, and its
"test" pairs were then mostly training pairs, used without a word."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from export.beam_parity import held_out
from export.pipeline import moved_data
from export.results import RANDOM_IDS_SOURCE
from tests.test_train_translate import tiny_argv
from training.checkpoint import load_checkpoint
from training.data.numbers import generate_pairs
from training.translate import train
from training.translate_setup import held_out_pairs


def _tsv(path, pairs):
    path.write_text("".join(f"{en}\t{fr}\tid{i}\n" for i, (en, fr) in enumerate(pairs)))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("leak")
    pairs = generate_pairs(240, seed=3)
    tsv = _tsv(root / "tiny.tsv", pairs)
    ckpt = load_checkpoint(train(tiny_argv("gru_attention", tsv, root / "out", "--epochs", "1")))
    grown = _tsv(root / "grown.tsv", pairs + generate_pairs(20, seed=99))
    return ckpt, tsv, grown


def test_the_unchanged_corpus_gives_the_runs_test_split(trained):
    ckpt, tsv, _ = trained
    assert len(held_out_pairs(moved_data(ckpt, str(tsv)), "test")) == ckpt["data"]["test_size"]


def test_a_grown_corpus_is_refused_as_the_held_out_split(trained):
    ckpt, _, grown = trained
    with pytest.raises(ValueError, match="not the one the run trained on .*raw_pairs 260, the run's 240"):
        held_out_pairs(moved_data(ckpt, str(grown)), "test")


def test_exports_gate_does_not_run_on_a_grown_corpus_test_split(trained, caplog):
    ckpt, _, grown = trained
    ctx = SimpleNamespace(validation=None, ckpt=moved_data(ckpt, str(grown)), name="tiny")
    spec = {"vocab_size_src": 40}
    data = held_out(ctx, spec, 200)
    assert data.origin == RANDOM_IDS_SOURCE and data.references is None
    assert "not the one the run trained on" in caplog.text
