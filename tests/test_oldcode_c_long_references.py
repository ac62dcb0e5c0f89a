"""Held-out references longer than evaluation decodes are named before training (not a silently low BLEU)."""

from __future__ import annotations

import logging

from training.data.numbers import generate_pairs
from training.translate import resolve_config
from training.translate_flags import build_parser
from training.translate_setup import prepare_data


def config(tsv, out, max_decode_length: int):
    argv = ["--model", "transformer", "--corpus", "tsv", "--data-path", str(tsv), "--vocab-size", "120"]
    argv += ["--max-decode-length", str(max_decode_length), "--output-dir", str(out), "--seed", "0"]
    return resolve_config(build_parser().parse_args(argv))


def test_references_longer_than_the_decode_length_are_counted_and_warned_about(tmp_path, caplog):
    # every held-out reference of 3-12 words is over 4 tokens with its EOS: each translation would be cut
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{en}\t{fr}\n" for en, fr in generate_pairs(400, seed=3)))
    with caplog.at_level(logging.WARNING, logger="training.translate"):
        corpus, tokenizers, _ = prepare_data(config(tsv, tmp_path, max_decode_length=4))
    long = {
        split: sum(
            len(ids) + 1 > 4 for ids in tokenizers.encode_target([t for _, t in getattr(corpus, split)])
        )
        for split in ("valid", "test")
    }
    assert long["valid"] > 0 and long["test"] > 0
    lines = [r.getMessage() for r in caplog.records if "--max-decode-length 4" in r.getMessage()]
    assert lines == [lines[0]] and str(long) in lines[0]


def test_no_warning_where_every_reference_fits(tmp_path, caplog):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{en}\t{fr}\n" for en, fr in generate_pairs(400, seed=3)))
    with caplog.at_level(logging.WARNING, logger="training.translate"):
        prepare_data(config(tsv, tmp_path, max_decode_length=200))
    assert not [r for r in caplog.records if "--max-decode-length" in r.getMessage()]
