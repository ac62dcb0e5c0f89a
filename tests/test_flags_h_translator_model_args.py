"""The translator's ``--model-arg`` beside its own flags: a dropout rate given twice, and a value of the
wrong type, are one error line before any data is read, never a run that trains with one rate while its
record says another, nor a traceback."""

from __future__ import annotations

import pytest

from training import translate
from training.translate_flags import build_parser

# Each run below is refused before any data is read; these keep one let through (without the fixes) short.
TINY = ["--epochs", "1", "--vocab-size", "60", "--threads", "1", "--no-progress", "--val-limit", "4"]
TINY += ["--test-beam", "1", "--max-decode-length", "8"]
NUMBERS = [*TINY, "--n-pairs", "60"]


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert captured.err.startswith("error: ") and len(captured.err.strip().splitlines()) == 1, captured.err
    return captured.err.strip()


def _config(argv: list[str]) -> translate.TranslateConfig:
    return translate.resolve_config(build_parser().parse_args(argv))


def test_a_dropout_given_as_a_flag_and_as_a_model_arg_with_two_rates_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--output-dir", str(out), *NUMBERS, "--dropout", "0.3", "--model-arg", "dropout=0.5"]
    assert translate.main(argv) == 2  # trained at 0.5, its train_config saying 0.3
    line = _error_line(capsys)
    assert "--dropout 0.3 and --model-arg dropout=0.5 disagree" in line
    assert not out.exists()


def test_a_dropout_model_arg_alone_is_the_rate_the_run_records(tmp_path):
    cfg = _config(["--output-dir", str(tmp_path), "--model-arg", "dropout=0.25"])
    assert cfg.dropout == 0.25 and cfg.model_args["dropout"] == 0.25  # the record said BASE's 0.1
    same = _config(["--output-dir", str(tmp_path), "--dropout", "0.25", "--model-arg", "dropout=0.25"])
    assert same.dropout == 0.25


def test_a_dropout_model_arg_out_of_range_is_named_as_the_model_arg(tmp_path, capsys):
    argv = ["--output-dir", str(tmp_path / "out"), *NUMBERS, "--model-arg", "dropout=2"]
    assert translate.main(argv) == 2
    assert "--model-arg: TransformerConfig.dropout must be in [0, 1), got 2" in _error_line(capsys)


@pytest.mark.parametrize("value", ["[1]", "{}"])
def test_an_rnn_type_that_is_no_string_is_an_error_line_not_a_type_error(value, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "--model",
        "gru_attention",
        "--output-dir",
        str(out),
        *NUMBERS,
        "--model-arg",
        f"rnn_type={value}",
    ]
    assert translate.main(argv) == 2  # was TypeError: unhashable type, and a traceback
    assert "unknown rnn_type" in _error_line(capsys)
    assert not out.exists()


def _tsv(tmp_path) -> str:
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"{n} apples\t{n} pommes\n" for n in range(40)), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--n-pairs", "10"], "--n-pairs sizes the generated numbers corpus; --corpus tsv reads every pair"),
        (["--lang", "de"], "--lang de names the numbers corpus's target language"),
    ],
)
def test_a_corpus_flag_a_tsv_corpus_does_not_read_is_refused_not_ignored(flags, message, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--output-dir", str(out), *TINY, "--corpus", "tsv", "--data-path", _tsv(tmp_path), *flags]
    assert translate.main(argv) == 2  # trained on all 40 pairs (or the file's language), without a word
    assert message in _error_line(capsys)
    assert not out.exists()


def test_lang_with_a_parallel_pair_of_files_is_refused_and_with_a_prefix_taken(tmp_path, capsys):
    both = ["--corpus", "parallel", "--data-path", f"{tmp_path}/a.en,{tmp_path}/a.fr", "--lang", "de"]
    assert translate.main(["--output-dir", str(tmp_path / "out"), *TINY, *both]) == 2
    assert "a --data-path naming both files is read as it is" in _error_line(capsys)
    prefix = _config(
        ["--output-dir", str(tmp_path), "--corpus", "parallel", "--data-path", "a", "--lang", "de"]
    )
    assert prefix.lang == "de"
    numbers = _config(["--output-dir", str(tmp_path), "--n-pairs", "100", "--lang", "de"])
    assert (numbers.n_pairs, numbers.lang) == (100, "de")
