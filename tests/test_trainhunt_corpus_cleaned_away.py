"""A parallel corpus that cleaning leaves too small to split is refused naming the file and what
cleaning left out of it: 50 pairs of 70-word sentences (past the 64 words a side a translator trains
on) were "corpus of 0 pairs is too small for 1 validation + 1 test pairs", naming neither."""

from __future__ import annotations

import pytest

from training.data.corpus import CorpusConfig, CorpusError, load_corpus


def test_pairs_all_past_the_word_limit_are_named_with_the_file(tmp_path):
    path = tmp_path / "long.tsv"
    path.write_text("".join(f"{'w ' * 70}{i}\tv {i}\n" for i in range(50)), encoding="utf-8")
    with pytest.raises(CorpusError) as caught:
        load_corpus(CorpusConfig(kind="tsv", data_path=str(path)))
    assert str(caught.value).startswith(f"{path}: 50 sentence pairs read, 0 kept (50 left out for a side ")
    assert "outside 1 to 64 words" in str(caught.value)


def test_duplicates_left_out_are_counted(tmp_path):
    path = tmp_path / "dups.tsv"
    path.write_text("a b\tc d\n" * 50, encoding="utf-8")
    with pytest.raises(CorpusError, match=r"dups\.tsv: 50 sentence pairs read, 1 kept \(49 duplicate"):
        load_corpus(CorpusConfig(kind="tsv", data_path=str(path)))


def test_a_corpus_too_small_as_read_names_its_file(tmp_path):
    path = tmp_path / "small.tsv"
    path.write_text("a\tb\nc\td\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=rf"^{path}: corpus of 2 pairs is too small"):
        load_corpus(CorpusConfig(kind="tsv", data_path=str(path)))


def test_a_corpus_large_enough_still_splits(tmp_path):
    path = tmp_path / "ok.tsv"
    path.write_text("".join(f"a {i}\tb {i}\n" for i in range(40)), encoding="utf-8")
    corpus = load_corpus(CorpusConfig(kind="tsv", data_path=str(path)))
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (36, 2, 2)


def test_a_directory_given_for_the_corpus_file_is_named_as_one(tmp_path):
    with pytest.raises(CorpusError, match=r"a directory, not a corpus file"):
        load_corpus(CorpusConfig(kind="tsv", data_path=str(tmp_path)))
