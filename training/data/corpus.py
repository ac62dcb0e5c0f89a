"""Parallel corpora for the translators: local files (Tatoeba-style TSV or two aligned text files) or
the offline numbers generator, cleaned (Unicode normalisation, optional lower-casing, length filters,
dedup) and split deterministically into train / validation / test by seed.
"""

from __future__ import annotations

import codecs
import logging
import os
import random
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tokenizers import normalizers

from training.data.numbers import generate_pairs

log = logging.getLogger(__name__)

Pair = tuple[str, str]
CORPUS_KINDS = ("numbers", "tsv", "parallel")
NORMALIZATIONS = ("NFC", "NFKC", "none")
BOM = codecs.BOM_UTF8.decode()  # U+FEFF
# a source's Unicode normalisation by the tokenizers library, as its tokenizer normalizes at serving
SOURCE_FORMS = {
    "NFC": normalizers.NFC().normalize_str,
    "NFKC": normalizers.NFKC().normalize_str,
    "none": None,
}


class CorpusError(ValueError):
    """A corpus file is missing or malformed; the message names the file and the line."""


@dataclass(frozen=True)
class CorpusConfig:
    kind: str = "numbers"
    data_path: str | None = None  # tsv: one file; parallel: "source_file,target_file" or a pair prefix
    lang: str = "fr"
    n_pairs: int = 36000  # numbers generator only
    normalization: str = "NFKC"
    lowercase: bool = False
    min_length: int = 1  # whitespace words, both sides
    max_length: int = 64
    dedup: bool = True
    valid_size: float = 0.05  # a fraction (< 1) or a count of pairs
    test_size: float = 0.05
    seed: int = 0


@dataclass
class Corpus:
    train: list[Pair]
    valid: list[Pair]
    test: list[Pair]
    info: dict[str, Any] = field(default_factory=dict)


def load_tsv(path: str | os.PathLike, src_col: int = 0, tgt_col: int = 1) -> list[Pair]:
    """Tab-separated pairs; further columns (Tatoeba ids, attribution) are ignored."""
    pairs = []
    for lineno, line in _read_lines(path):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) <= max(src_col, tgt_col):
            raise CorpusError(
                f"{path}:{lineno}: expected at least {max(src_col, tgt_col) + 1} tab-separated columns, "
                f"got {len(cols)}: {line[:60]!r}"
            )
        src, tgt = cols[src_col].strip(), cols[tgt_col].strip()
        if not src or not tgt:
            raise CorpusError(f"{path}:{lineno}: empty {'source' if not src else 'target'} column")
        pairs.append((src, tgt))
    if not pairs:
        raise CorpusError(f"{path}: no sentence pairs found")
    return pairs


def load_parallel(src_path: str | os.PathLike, tgt_path: str | os.PathLike) -> list[Pair]:
    """Two aligned text files, one sentence per line; line counts and blank lines must agree (blank lines
    at the end of one file, past the other's last line, do not count)."""
    src_lines, tgt_lines = list(_read_lines(src_path)), list(_read_lines(tgt_path))
    for longer, shorter in ((src_lines, tgt_lines), (tgt_lines, src_lines)):
        while len(longer) > len(shorter) and not longer[-1][1].strip():
            longer.pop()  # blank lines past the other file's end: an editor's extra newline, not a pair
    if len(src_lines) != len(tgt_lines):
        raise CorpusError(
            f"{src_path} has {len(src_lines)} lines but {tgt_path} has {len(tgt_lines)}: files are not aligned"
        )
    pairs = []
    for (lineno, src), (_, tgt) in zip(src_lines, tgt_lines, strict=True):
        src, tgt = src.strip(), tgt.strip()
        if not src and not tgt:
            continue
        if not src or not tgt:
            empty = src_path if not src else tgt_path
            raise CorpusError(f"{empty}:{lineno}: empty line where the other file has a sentence")
        pairs.append((src, tgt))
    if not pairs:
        raise CorpusError(f"{src_path}: no sentence pairs found")
    return pairs


def _read_lines(path: str | os.PathLike):
    """``(line number, line)`` of a UTF-8 file, lines ended by LF (or CR LF) as ``wc -l`` and an editor
    count them: a stray CR inside a sentence is whitespace of that sentence, not a line break that would
    shift every later line of one aligned file (text mode's universal newlines did). A classic-Mac file
    is read as ended by CR (:func:`_line_end`)."""
    path = Path(path)
    if path.is_dir():  # was "no such corpus file", of a path that exists
        raise CorpusError(f"{path}: a directory, not a corpus file; give the file's path")
    if not path.is_file():
        raise CorpusError(f"{path}: no such corpus file")
    raw = path.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):  # a byte-order mark (Excel, Notepad) would begin the first sentence
        raw = raw[len(codecs.BOM_UTF8) :]
    end = _line_end(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = raw.count(end, 0, exc.start) + 1
        raise CorpusError(f"{path}:{lineno}: not UTF-8 text ({exc})") from exc
    if end == b"\r":
        text = text.replace("\r\n", "\r")  # one line end (a lone LF is whitespace, or stripped last)
    lines = text.split(end.decode())
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    # A BOM that begins a later line is where files were joined (``cat a.tsv b.tsv``): it began that
    # sentence, so an exact duplicate of another pair was kept (one copy could land in the test split)
    # and the model learnt an invisible character no client sends.
    return [(i, line.rstrip("\r\n").removeprefix(BOM)) for i, line in enumerate(lines, start=1)]


def _line_end(raw: bytes) -> bytes:
    """What ends a line of ``raw``: LF (CR LF too), or CR in a classic-Mac file, one whose lone CRs
    outnumber its LFs. Read by LF, such a file with one LF (a final one a tool appended, a stray one in
    a sentence) was a single line: every sentence of an aligned file one source, a TSV its first pair."""
    lone_cr = raw.count(b"\r") - raw.count(b"\r\n")
    return b"\r" if lone_cr > raw.count(b"\n") else b"\n"


def clean_pairs(
    pairs: list[Pair],
    *,
    normalization: str = "NFKC",
    lowercase: bool = False,
    min_length: int = 1,
    max_length: int = 64,
    dedup: bool = True,
) -> list[Pair]:
    """Normalise, filter by word count on both sides and drop exact duplicates (first one kept).

    Sources are normalised and lower-cased by the ``tokenizers`` library, whose normalizer serving
    applies to a client's raw text: Python's ``str.lower`` writes a word-final capital sigma as "ς"
    where the library's ``Lowercase`` writes "σ", and Python's NFKC (another Unicode version) maps
    characters ("㋿", "ꟲ") the library keeps, so a model would be served ids it never saw in training.
    A lower-cased source is NFKC-normalised whatever ``normalization`` says, as that normalizer does
    before it lower-cases ("ℂ" is "c" there; lower-cased first, then NFKC, it would be "C").
    Targets, never normalised at serving, keep Python's rules: the model learns to write a final "ς".
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; choose from {NORMALIZATIONS}")

    def norm(text: str, form: Callable[[str], str] | None, lower: Callable[[str], str]) -> str:
        if form is not None:  # first: NFKC turns some characters into spaces ("´" -> " ́")
            text = form(text)
        text = " ".join(text.split())
        return lower(text) if lowercase else text

    source_form = SOURCE_FORMS["NFKC" if lowercase else normalization]
    source_lower = normalizers.Lowercase().normalize_str
    target_form = None if normalization == "none" else partial(unicodedata.normalize, normalization)

    out: dict[Pair, None] | list[Pair] = {} if dedup else []
    for src, tgt in pairs:
        pair = (norm(src, source_form, source_lower), norm(tgt, target_form, str.lower))
        if all(min_length <= len(s.split()) <= max_length for s in pair):
            if dedup:
                out.setdefault(pair, None)
            else:
                out.append(pair)
    return list(out)


def split_pairs(pairs: list[Pair], valid_size: float, test_size: float, seed: int) -> tuple[list, list, list]:
    """Shuffle by ``seed`` and cut validation and test sets off the front; sizes are fractions or counts."""
    n = len(pairs)
    n_valid, n_test = _count(valid_size, n), _count(test_size, n)
    if n_valid + n_test >= n:
        raise CorpusError(f"corpus of {n} pairs is too small for {n_valid} validation + {n_test} test pairs")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    shuffled = [pairs[i] for i in order]
    return shuffled[n_valid + n_test :], shuffled[:n_valid], shuffled[n_valid : n_valid + n_test]


def _count(size: float, n: int) -> int:
    return int(size) if size >= 1 else max(1, round(size * n)) if size > 0 else 0


def read_pairs(config: CorpusConfig) -> list[Pair]:
    """The raw pairs of the configured source, before cleaning."""
    if config.kind == "numbers":
        if config.data_path:  # else the files would be silently ignored for generated pairs
            raise CorpusError(
                f"--data-path {config.data_path} needs --corpus tsv or parallel; the default corpus, "
                "numbers, is generated and reads no files"
            )
        return generate_pairs(config.n_pairs, lang=config.lang, seed=config.seed)
    if not config.data_path:
        raise CorpusError(f"--corpus {config.kind} needs --data-path")
    if config.kind == "tsv":
        return load_tsv(config.data_path)
    if config.kind == "parallel":
        return load_parallel(*_parallel_paths(config.data_path, config.lang))
    raise CorpusError(f"unknown corpus kind {config.kind!r}; choose from {CORPUS_KINDS}")


def corpus_files(config: CorpusConfig) -> list[str]:
    """The files a corpus of ``config`` reads (none for generated pairs): what a resumed run finds again."""
    if config.kind == "tsv" and config.data_path:
        return [config.data_path]
    if config.kind == "parallel" and config.data_path:
        return list(_parallel_paths(config.data_path, config.lang))
    return []


def _parallel_paths(data_path: str, lang: str) -> tuple[str, str]:
    """'a.en,a.fr' names both files; a bare prefix 'train' means 'train.en' and 'train.<lang>'."""
    if "," in data_path:
        src, tgt = data_path.split(",", 1)
        return src, tgt
    return f"{data_path}.en", f"{data_path}.{lang}"


def _source(config: CorpusConfig) -> str:
    return config.data_path if config.data_path else f"the {config.kind} corpus"


def _cleaned(raw: list[Pair], config: CorpusConfig, *, dedup: bool) -> list[Pair]:
    """``raw`` cleaned by ``config``'s settings (:func:`clean_pairs`)."""
    return clean_pairs(
        raw,
        normalization=config.normalization,
        lowercase=config.lowercase,
        min_length=config.min_length,
        max_length=config.max_length,
        dedup=dedup,
    )


def dropped(raw: list[Pair], pairs: list[Pair], config: CorpusConfig) -> str:
    """What cleaning took out of ``raw`` to leave ``pairs``, by reason: a corpus it left too small to
    split was "corpus of 0 pairs is too small", for a file of 50 pairs of 70-word sentences, naming
    neither the file nor the length filter."""
    kept = _cleaned(raw, config, dedup=False)
    reasons = []
    if len(raw) > len(kept):
        reasons.append(
            f"{len(raw) - len(kept)} left out for a side outside {config.min_length} to "
            f"{config.max_length} words"
        )
    if len(kept) > len(pairs):
        reasons.append(f"{len(kept) - len(pairs)} duplicate(s) left out")
    return f"{len(raw)} sentence pairs read, {len(pairs)} kept ({', '.join(reasons)})"


def load_corpus(config: CorpusConfig) -> Corpus:
    """Read, clean and split a corpus; ``info`` records where it came from and the split sizes."""
    raw = read_pairs(config)
    pairs = _cleaned(raw, config, dedup=config.dedup)
    try:
        train, valid, test = split_pairs(pairs, config.valid_size, config.test_size, config.seed)
    except CorpusError as exc:  # named: the file, and what cleaning left out of it
        cut = f"{dropped(raw, pairs, config)}; " if len(pairs) < len(raw) else ""
        raise CorpusError(f"{_source(config)}: {cut}{exc}") from exc
    info = {
        "corpus": config.kind,
        "data_path": config.data_path,
        "lang": config.lang,
        "split_seed": config.seed,
        "raw_pairs": len(raw),
        "clean_pairs": len(pairs),
        "train_size": len(train),
        "valid_size": len(valid),
        "test_size": len(test),
    }
    log.info(
        "corpus %s: %d raw pairs, %d after cleaning, split %d/%d/%d",
        config.kind,
        len(raw),
        len(pairs),
        len(train),
        len(valid),
        len(test),
    )
    return Corpus(train=train, valid=valid, test=test, info=info)
