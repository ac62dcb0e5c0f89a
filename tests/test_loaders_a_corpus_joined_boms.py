"""A corpus file joined from files that each began with a UTF-8 byte-order mark (``cat a.tsv b.tsv``,
each saved by Excel or Notepad) is read as the files were: the mark that begins a later line began its
sentence, so an exact duplicate of another pair survived deduplication (one copy could be tested on
while the other trained) and the model learnt an invisible character no client sends."""

from __future__ import annotations

import codecs

from training.data.corpus import CorpusConfig, load_corpus, load_parallel, load_tsv

BOM = codecs.BOM_UTF8


def test_a_bom_beginning_a_later_tsv_line_is_not_part_of_its_source(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(BOM + b"cat\tchat\r\n" + BOM + b"cat\tchat\r\ndog\tchien\r\n")
    assert load_tsv(path) == [("cat", "chat"), ("cat", "chat"), ("dog", "chien")]


def test_a_bom_beginning_a_later_line_of_an_aligned_file_is_dropped(tmp_path):
    (tmp_path / "train.en").write_bytes(BOM + b"one\n" + BOM + b"two\n")
    (tmp_path / "train.fr").write_bytes(b"un\n" + BOM + b"deux\n")
    assert load_parallel(tmp_path / "train.en", tmp_path / "train.fr") == [("one", "un"), ("two", "deux")]


def test_joined_files_repeating_a_pair_keep_it_once_so_no_copy_is_held_out(tmp_path):
    first = b"".join(b"w%d x\tm%d y\n" % (i, i) for i in range(40))
    second = b"w0 x\tm0 y\nlast one\tdernier\n"  # repeats the first file's first pair
    path = tmp_path / "joined.tsv"
    path.write_bytes(BOM + first + BOM + second)
    corpus = load_corpus(CorpusConfig(kind="tsv", data_path=str(path), valid_size=4, test_size=4))
    everything = corpus.train + corpus.valid + corpus.test
    assert corpus.info["clean_pairs"] == 41 and len(set(everything)) == 41
    assert all("\ufeff" not in src + tgt for src, tgt in everything)
