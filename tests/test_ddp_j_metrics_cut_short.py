"""A metrics record whose append failed part-way (the disk filled as rank 0 wrote it, or the process was
killed) left a last line cut short in ``<name>.metrics.jsonl``; ``--resume`` then stopped on it with the
JSON parser's bare "error: Expecting ',' delimiter: line 1 column 31 (char 30)", naming no file, and the
run could not be resumed at all. The cut record is left out (it is of an epoch the resume state does not
hold) and the run goes on; any other line that is not a record is an error naming the file and line."""

from __future__ import annotations

import errno
import json
import random
import re

import pytest

from training import classify, translate
from training.data.numbers import generate_pairs
from training.tracking import MetricsLogger, read_metrics


def fill_the_disk_at_record(monkeypatch, number: int) -> None:
    """The ``number``-th record's append writes half its line, then fails as a full disk does."""
    real, count = MetricsLogger.log, [0]

    def log(self, record):
        count[0] += 1
        if count[0] < number:
            return real(self, record)
        self.begin()
        line = json.dumps(record, default=float)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line[: len(line) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(MetricsLogger, "log", log)


def test_a_classifier_whose_metrics_append_failed_part_way_resumes(tmp_path, monkeypatch, capsys):
    fill_the_disk_at_record(monkeypatch, 2)
    argv = ["--model", "lenet", "--image-size", "16", "--limit-train", "64", "--limit-val", "16"]
    argv += ["--batch-size", "16", "--epochs", "2", "--no-progress", "--device", "cpu"]
    assert classify.main([*argv, "--output-dir", str(tmp_path)]) == 1  # the full disk, in one line
    assert not (tmp_path / "lenet.metrics.jsonl").read_text().endswith("\n")
    monkeypatch.undo()
    capsys.readouterr()
    resume = ["--resume", str(tmp_path / "lenet.resume.pt"), "--epochs", "2", "--no-progress"]
    assert classify.main([*resume, "--device", "cpu", "--output-dir", str(tmp_path)]) == 0, (
        capsys.readouterr()
    )
    assert [r["epoch"] for r in read_metrics(tmp_path / "lenet.metrics.jsonl")] == [1, 2]
    assert (tmp_path / "lenet.metrics.jsonl").read_text().count("\n") == 2  # the cut line is gone


def test_a_translator_whose_metrics_append_failed_part_way_resumes(tmp_path, monkeypatch, capsys):
    tsv = tmp_path / "tiny.tsv"
    pairs = generate_pairs(240, seed=3)
    random.Random(0).shuffle(pairs)
    tsv.write_text("".join(f"{en}\t{fr}\n" for en, fr in pairs), encoding="utf-8")
    argv = ["--model", "transformer", "--corpus", "tsv", "--data-path", str(tsv), "--batch-size", "32"]
    argv += ["--vocab-size", "120", "--val-limit", "4", "--test-beam", "1", "--max-decode-length", "8"]
    argv += ["--threads", "1", "--device", "cpu", "--no-progress", "--output-dir", str(tmp_path)]
    argv += ["--name", "tiny", "--epochs", "2", "--time-budget", "0"]
    for arg in ("d_model=16", "heads=2", "ffn_dim=32", "encoder_layers=1", "decoder_layers=1"):
        argv += ["--model-arg", arg]
    fill_the_disk_at_record(monkeypatch, 2)
    assert translate.main(argv) == 1
    monkeypatch.undo()
    capsys.readouterr()
    resume = ["--resume", str(tmp_path / "tiny.resume.pt"), "--epochs", "2", "--no-progress"]
    assert translate.main([*resume, "--output-dir", str(tmp_path), "--device", "cpu"]) == 0, (
        capsys.readouterr()
    )
    assert [r["epoch"] for r in read_metrics(tmp_path / "tiny.metrics.jsonl")] == [1, 2]


def test_a_damaged_line_before_the_last_is_an_error_naming_the_file_and_line(tmp_path):
    path = tmp_path / "m.metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2, "tr\n{"epoch": 3}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="^" + re.escape(f"{path}: line 2 is not a JSON record (")):
        read_metrics(path)


def test_a_whole_file_and_one_cut_short_at_its_end_read_their_whole_records(tmp_path):
    path = tmp_path / "m.metrics.jsonl"
    path.write_text('{"epoch": 1}\n\n{"epoch": 2}\n', encoding="utf-8")
    assert read_metrics(path) == [{"epoch": 1}, {"epoch": 2}]
    path.write_text('{"epoch": 1}\n{"epoch": 2, "train_lo', encoding="utf-8")
    assert read_metrics(path) == [{"epoch": 1}]
