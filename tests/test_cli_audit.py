"""User mistakes on the training and export command lines: one ``error: ...`` line and a non-zero exit,
before any work and with nothing left behind; damaged files named as such; what the help shows."""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch

from kiln.cli import HelpFormatter
from tests.repo_fixtures import _tiny_checkpoint
from training import classify, translate, zoo
from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.data.corpus import load_parallel, load_tsv

ROOT = Path(__file__).resolve().parents[1]


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert captured.err.startswith("error: ") and len(captured.err.strip().splitlines()) == 1, captured.err
    return captured.err.strip()


def _flip_member_bytes(path: Path, member_suffix: str) -> None:
    """Invert the first bytes of one stored member of a zip archive, leaving its size and CRC as they were."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    with open(path, "r+b") as fh:
        fh.seek(info.header_offset + 26)
        name_length, extra_length = (int.from_bytes(fh.read(2), "little") for _ in range(2))
        start = info.header_offset + 30 + name_length + extra_length
        fh.seek(start)
        data = fh.read(min(16, info.file_size))
        fh.seek(start)
        fh.write(bytes(b ^ 0xFF for b in data))


# Settings that keep a run short where a flag is let through (the checks run before any of it).
TINY_CLASSIFY = [
    "--epochs",
    "1",
    "--image-size",
    "16",
    "--limit-val",
    "16",
    "--batch-size",
    "64",
    "--no-progress",
]
TINY_TRANSLATE = [
    "--n-pairs",
    "60",
    "--epochs",
    "1",
    "--vocab-size",
    "60",
    "--val-limit",
    "4",
    "--threads",
    "1",
]
TINY_TRANSLATE += ["--test-beam", "1", "--max-decode-length", "8", "--no-progress"]
TINY_TRANSLATE += [
    f"--model-arg={arg}" for arg in ("d_model=16", "heads=2", "ffn_dim=16", "encoder_layers=1")
]
TINY_TRANSLATE += ["--model-arg=decoder_layers=1"]

CLASSIFY_CASES = {
    "--limit-train must be >= 1, got -5": ["--limit-train", "-5"],  # would drop 5 images from the end
    "--limit-val must be >= 1, got 0": ["--limit-val", "0"],
    "--clip-grad-norm must be >= 0, got -1.0": ["--clip-grad-norm", "-1"],  # gradient ascent
    "--lr must be a finite number, got inf": ["--lr", "inf"],  # a checkpoint of NaN weights
    "--lr must be a finite number, got nan": ["--lr", "nan"],
    "--weight-decay must be >= 0, got -0.1": ["--weight-decay", "-0.1"],
    "--warmup-epochs must be >= 0, got -1.0": ["--warmup-epochs", "-1"],
    "--early-stopping must be >= 0, got -2": ["--early-stopping", "-2"],
    "--model-arg num_classes comes from the dataset's classes": ["--model-arg", "num_classes=3"],  # TypeError
    "--model-arg in_channels comes from --channels": ["--model-arg", "in_channels=3"],
}


@pytest.mark.parametrize("message", sorted(CLASSIFY_CASES))
def test_classifier_flags_out_of_range_are_error_lines_before_any_data_is_read(message, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--model", "lenet", "--output-dir", str(out), *TINY_CLASSIFY, *CLASSIFY_CASES[message]]
    assert classify.main(argv) == 2
    assert message in _error_line(capsys)
    assert not out.exists()


def test_an_unknown_classifier_name_lists_the_classifiers_only(tmp_path, capsys):
    assert classify.main(["--model", "nosuchnet", "--output-dir", str(tmp_path / "out")]) == 2
    line = _error_line(capsys)
    assert line.startswith("error: unknown model 'nosuchnet'; choose a classifier from ['alexnet',")
    assert "'lenet'" in line and "transformer" not in line and '"' not in line


TRANSLATE_CASES = {
    "--threads must be >= 0, got -1": ["--threads", "-1"],  # set_num_threads traceback
    "--lr must be a finite number, got inf": ["--lr", "inf"],  # beam search IndexError after training
    "--clip-norm must be >= 0, got -1.0": ["--clip-norm", "-1"],
    "--eval-every must be >= 0, got -1": ["--eval-every", "-1"],  # validated every step
    "--time-budget must be >= 0, got -1.0": ["--time-budget", "-1"],  # stopped at step 1
    "--val-limit must be >= 0, got -3": ["--val-limit", "-3"],
    "--patience must be >= 0, got -1": ["--patience", "-1"],
    "--warmup-steps must be >= 0, got -5": ["--warmup-steps", "-5"],
    "--dropout must be in [0, 1), got 1.0": ["--dropout", "1"],
    # the architecture's own checks, named before the corpus is read, not at the model's first forward
    "--model-arg: TransformerConfig: d_model=16 is not divisible by heads=3": ["--model-arg", "heads=3"],
    "--model-arg: TransformerConfig.decoder_layers must be a positive integer, got 0": [
        "--model-arg",
        "decoder_layers=0",
    ],
    # silently overrode the tokenizers' ids: the data's padding read as a token, token 5 masked
    "--model-arg pad_id comes from the tokenizers (<pad> is 0)": ["--model-arg", "pad_id=5"],
    "--model-arg tgt_vocab_size comes from the target tokenizer": ["--model-arg", "tgt_vocab_size=50"],
}


@pytest.mark.parametrize("message", sorted(TRANSLATE_CASES))
def test_translator_flags_out_of_range_are_error_lines_before_any_data_is_read(message, tmp_path, capsys):
    out = tmp_path / "out"
    assert translate.main(["--output-dir", str(out), *TINY_TRANSLATE, *TRANSLATE_CASES[message]]) == 2
    assert message in _error_line(capsys)
    assert not out.exists()


def test_translator_help_says_what_zero_means_for_the_limits_where_zero_turns_them_off(capsys):
    with pytest.raises(SystemExit):
        translate.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "validation sentences decoded per evaluation (0 = all of them)" in text
    assert "minutes of training before stopping gracefully (0 = no limit)" in text


@pytest.fixture
def unwritable_dir():
    """A directory an unprivileged process cannot write into, and the command prefix that runs as one
    (root writes anywhere: as root, the command runs as ``nobody`` through ``setpriv``)."""
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: no unprivileged user to run the trainer as")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    else:
        prefix = []
    path = Path(tempfile.mkdtemp(prefix="kiln-readonly-"))  # under /tmp: reachable by nobody
    path.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    if not prefix:
        path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    yield path, prefix
    path.chmod(stat.S_IRWXU)
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("trainer", ["training.classify", "training.translate"])
def test_an_output_dir_that_cannot_be_created_is_an_error_line_before_training(trainer, unwritable_dir):
    path, prefix = unwritable_dir
    model = ["--model", "lenet", *TINY_CLASSIFY] if trainer == "training.classify" else TINY_TRANSLATE
    argv = [*prefix, sys.executable, "-m", trainer, *model, "--output-dir", str(path / "out")]
    env = {**os.environ, "MPLCONFIGDIR": str(path), "HOME": str(path)}
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"error: --output-dir {path / 'out'} cannot be created: {path} is not writable" in done.stderr


def _saved_resume_state(out: Path) -> Path:
    """A stand-in for the ``lenet.resume.pt`` a run writes into ``out``, with one real tensor."""
    out.mkdir(parents=True, exist_ok=True)
    state = {"epoch": 1, "model_name": "lenet", "model_args": {}, "model": {"w": torch.arange(64.0)}}
    return save_checkpoint({**state, "optimizer": {}, "scheduler": {}, "data": {}}, out / "lenet.resume.pt")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:400])


def _foreign(path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, path)


def _damage(path: Path) -> None:
    _flip_member_bytes(path, "data/0")


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (
            _truncate,
            "is not a resume state (torch.save writes a zip archive; this is not one, or a truncated one)",
        ),
        (_foreign, "is not a classifier resume state (it lacks ['epoch', 'model_name'"),
        (_damage, "lenet.resume.pt: damaged: data/0 does not match the checksum stored with it"),
    ],
)
def test_a_truncated_foreign_or_damaged_resume_file_is_an_error_line(spoil, message, tmp_path, capsys):
    resume = _saved_resume_state(tmp_path / "run")
    spoil(resume)
    argv = ["--resume", str(tmp_path / "run" / "lenet.pt"), "--output-dir", str(tmp_path / "out")]
    assert classify.main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: --resume {tmp_path / 'run' / 'lenet.pt'}: ") and message in line, line


def test_a_checkpoint_with_damaged_weight_bytes_is_refused_and_nothing_is_exported(tmp_path, capsys):
    from export.__main__ import main

    path = _tiny_checkpoint(tmp_path / "lenet.pt", "lenet", seed=0)
    _flip_member_bytes(path, "data/0")
    torch.load(path, weights_only=True)  # torch reads the damaged weights without a word
    assert main([str(path), "--repository", str(tmp_path / "repo")]) == 1
    err = capsys.readouterr().err
    assert f"export failed: {path}: damaged: " in err and "Traceback" not in err
    assert not (tmp_path / "repo").exists()  # made by the export, nothing written: removed again
    with pytest.raises(CheckpointError, match="does not match the checksum stored with it"):
        load_checkpoint(path)


def test_a_resume_state_given_to_export_is_named_as_one(tmp_path):
    resume = _saved_resume_state(tmp_path)
    with pytest.raises(CheckpointError, match=r"a training resume state \(for --resume\), not a checkpoint"):
        load_checkpoint(resume)


def test_a_saved_checkpoint_gets_the_file_mode_of_the_umask_not_a_private_one(tmp_path):
    old = os.umask(0o022)
    try:
        path = _tiny_checkpoint(tmp_path / "lenet.pt", "lenet", seed=0)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by the group's export and bench
    assert load_checkpoint(path)["model"]["name"] == "lenet"


def test_zoo_refuses_bad_flags_and_a_directory_as_output_before_training_any_model(tmp_path, capsys):
    out = tmp_path / "zoo"
    assert zoo.main(["--models", "lenet", "--epochs", "0", "--output-dir", str(out)]) == 2
    assert "error: --epochs must be >= 1, got 0" in _error_line(capsys)
    argv = [
        "--models",
        "lenet",
        "--epochs",
        "1",
        "--limit-train",
        "32",
        "--no-progress",
        "--output-dir",
        str(out),
    ]
    argv += ["--output", str(tmp_path)]
    assert zoo.main(argv) == 2
    assert f"error: --output {tmp_path} is a directory, not a file" in _error_line(capsys)
    assert not out.exists()  # nothing trained


def test_a_byte_order_mark_does_not_become_part_of_the_first_sentence(tmp_path):
    bom = "\ufeff".encode()
    (tmp_path / "pairs.tsv").write_bytes(bom + b"one\tun\ntwo\tdeux\n")
    assert load_tsv(tmp_path / "pairs.tsv") == [("one", "un"), ("two", "deux")]
    (tmp_path / "a.en").write_bytes(bom + b"one\n")
    (tmp_path / "a.fr").write_bytes(bom + b"un\n")
    assert load_parallel(tmp_path / "a.en", tmp_path / "a.fr") == [("one", "un")]


def test_help_shows_the_default_of_options_without_help_text_and_hides_empty_lists():
    parser = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--tag", action="append", default=[], help="repeatable tag")
    parser.add_argument("--name")
    text = " ".join(parser.format_help().split())
    assert "--image-size IMAGE_SIZE default: 32" in text
    assert "repeatable tag" in text and "(default: [])" not in text
    assert "None" not in text
    classify_help = " ".join(classify.build_parser().format_help().split())
    assert "--image-size IMAGE_SIZE default: 32" in classify_help
    assert "--output-dir OUTPUT_DIR where the checkpoint, metrics and plots go (default: checkpoints;" in (
        classify_help
    )


def test_a_cifar_batch_with_a_label_outside_its_classes_is_an_error_line_before_training(tmp_path, capsys):
    import pickle

    import numpy as np

    root = tmp_path / "cifar"
    root.mkdir()
    data = np.random.default_rng(0).integers(0, 255, (20, 3072), dtype=np.uint8)
    batch = {b"data": data, b"labels": [i % 10 for i in range(19)] + [12]}
    (root / "data_batch_1").write_bytes(pickle.dumps(batch))
    argv = ["--model", "lenet", "--dataset", "cifar10", "--data-path", str(root), *TINY_CLASSIFY]
    assert classify.main([*argv, "--batch-size", "8", "--output-dir", str(tmp_path / "out")]) == 2
    assert _error_line(capsys) == f"error: {root}: label 12 out of range for 10 classes"


def test_a_diverged_translator_translates_to_empty_texts_with_a_warning_instead_of_an_index_error(
    caplog,
) -> None:
    """Beam search keeps no hypothesis where every score is NaN; the evaluation after such a run failed
    with an IndexError instead of scoring the empty translations."""
    from tests.test_models_translate import tiny
    from training.data.tokenizer import TokenizerConfig, build_tokenizers
    from training.translation_eval import translate_texts

    pairs = [("one two three", "un deux trois"), ("four five", "quatre cinq")] * 4
    tokenizers = build_tokenizers(pairs, TokenizerConfig(vocab_size=40, shared=True, lowercase=True))
    model = tiny("transformer")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    with caplog.at_level("WARNING", logger="training.translate"):
        out = translate_texts(model, tokenizers, ["one two", "four"], beam=4, max_length=8)
    assert out == ["", ""]
    assert "found no translation for 2 of 2 texts" in caplog.text
