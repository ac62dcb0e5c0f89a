"""A classic-Mac corpus file (lines ended by a lone CR) reads as its lines even with an LF in it.

Lines end at LF (or CR LF), and a file is read by CR only where its lone CRs outnumber its LFs: read by
LF, such a file with one LF (a final newline a tool appended) was a single line, so two aligned files
became one pair of whole files and a TSV its first pair, silently; and an invalid byte in it was named
as line 1 whatever its line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data.corpus import CorpusError, load_parallel, load_tsv


def test_aligned_classic_mac_files_with_a_final_newline_read_as_their_lines(tmp_path: Path) -> None:
    (tmp_path / "m.en").write_bytes(b"one\rtwo\rthree\rfour\r\n")  # "\r\n": a final newline appended
    (tmp_path / "m.fr").write_bytes(b"un\rdeux\rtrois\rquatre\n")
    assert load_parallel(tmp_path / "m.en", tmp_path / "m.fr") == [
        ("one", "un"),
        ("two", "deux"),
        ("three", "trois"),
        ("four", "quatre"),
    ]


def test_a_classic_mac_tsv_with_a_stray_newline_keeps_every_pair(tmp_path: Path) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"\xef\xbb\xbfone\tun\rtwo\tdeux\nencore\rthree\ttrois\r")
    pairs = load_tsv(path)
    assert [(s, " ".join(t.split())) for s, t in pairs] == [
        ("one", "un"),
        ("two", "deux encore"),  # the stray LF is whitespace, as a stray CR is in an LF file
        ("three", "trois"),
    ]


def test_a_byte_that_is_not_utf8_in_a_classic_mac_file_is_named_by_its_line(tmp_path: Path) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"one\tun\rtwo\tdeux\rcaf\xe9\tcaf\xe9\r")
    with pytest.raises(CorpusError, match=r"pairs.tsv:3: not UTF-8 text"):
        load_tsv(path)


@pytest.mark.parametrize(
    "data",
    [
        b"one\tun\ntwo\tdeux\n\nthree\ttrois\n",
        b"one\tun\r\ntwo\tdeux\r\n\r\nthree\ttrois\r\n",
        b"one\tun\rtwo\tdeux\r\rthree\ttrois\r",
        b"\xef\xbb\xbfone\tun\ntwo\tdeux\n\nthree\ttrois",
    ],
    ids=["lf", "crlf", "cr", "bom-no-final-newline"],
)
def test_files_without_stray_line_ends_read_as_text_mode_read_them(tmp_path: Path, data: bytes) -> None:
    """The pairs (and so a run's corpus digest) of such a file are those universal newlines gave, so
    a run begun before lines were read by bytes resumes."""
    path = tmp_path / "pairs.tsv"
    path.write_bytes(data)
    before = [line.split("\t") for line in path.read_text(encoding="utf-8-sig").split("\n") if line]
    assert load_tsv(path) == [(s, t) for s, t in before]
