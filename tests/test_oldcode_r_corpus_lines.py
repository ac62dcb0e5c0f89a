"""Corpus files are read in lines as ``wc -l`` and an editor count them: "\\n" or "\\r\\n" ends a line.

Read in text mode, a stray "\\r" inside a sentence was a line break too (universal newlines): one such
character in each of two aligned files silently paired every sentence between them with its
neighbour's translation, one in only one file reported a line count the file does not have, and every
error past it named the wrong line. An invalid UTF-8 byte is named by line as well.
"""

from __future__ import annotations

import pytest

from training.data.corpus import CorpusError, load_parallel, load_tsv


def test_a_stray_carriage_return_in_each_aligned_file_does_not_shift_the_pairs(tmp_path):
    (tmp_path / "a.en").write_bytes(b"one\rmore\ntwo\nthree\nfour\n")
    (tmp_path / "a.fr").write_bytes(b"un\ndeux\ntrois\rencore\nquatre\n")
    pairs = load_parallel(tmp_path / "a.en", tmp_path / "a.fr")
    assert [(s.split()[0], t.split()[0]) for s, t in pairs] == [
        ("one", "un"),
        ("two", "deux"),
        ("three", "trois"),
        ("four", "quatre"),
    ]


def test_a_stray_carriage_return_in_one_aligned_file_keeps_the_files_aligned(tmp_path):
    (tmp_path / "b.en").write_bytes(b"one\rmore\ntwo\n")
    (tmp_path / "b.fr").write_bytes(b"un\ndeux\n")
    assert len(load_parallel(tmp_path / "b.en", tmp_path / "b.fr")) == 2


def test_a_tsv_error_past_a_stray_carriage_return_names_the_editors_line(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"one\tun\rencore\ntwo\tdeux\nthree\n")
    with pytest.raises(CorpusError, match=r"pairs.tsv:3: expected at least 2 tab-separated columns"):
        load_tsv(path)


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "classic-mac-cr"])
def test_every_common_line_ending_still_reads(tmp_path, ending):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + ending.join([b"one\tun", b"two\tdeux", b""]))
    assert load_tsv(path) == [("one", "un"), ("two", "deux")]


def test_a_byte_that_is_not_utf8_is_named_by_its_line(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"\xef\xbb\xbfone\tun\ntwo\tdeux\ncaf\xe9\tcaf\xe9\n")
    with pytest.raises(CorpusError, match=r"pairs.tsv:3: not UTF-8 text"):
        load_tsv(path)
