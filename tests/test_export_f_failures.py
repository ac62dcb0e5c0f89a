"""What ``python -m export`` tells a user when a checkpoint is malformed or the export is stopped: one
line naming the file and what to do, never a traceback, and nothing left behind by a SIGTERM."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from export.pipeline import export_checkpoint
from tests.classifier_exports import write_checkpoint
from training.checkpoint import CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt"), "lenet")


def _altered(lenet: Path, tmp_path: Path, **changes: object) -> Path:
    ckpt = torch.load(lenet, weights_only=True)
    path = tmp_path / "altered.pt"
    torch.save({**ckpt, **changes}, path)
    return path


@pytest.mark.parametrize("version", ["2", None, [1]])
def test_a_format_version_that_is_no_number_is_refused_naming_the_file(
    lenet: Path, tmp_path: Path, version: object
) -> None:
    path = _altered(lenet, tmp_path, format_version=version)
    with pytest.raises(CheckpointError, match=rf"^{path}: format_version must be a number"):
        load_checkpoint(path)


def test_a_newer_format_version_says_what_to_do(lenet: Path, tmp_path: Path) -> None:
    path = _altered(lenet, tmp_path, format_version=99)
    with pytest.raises(CheckpointError, match=rf"^{path}: format_version 99 is newer .* upgrade"):
        load_checkpoint(path)


def test_a_task_that_is_no_string_is_refused_as_an_unknown_task(lenet: Path, tmp_path: Path) -> None:
    path = _altered(lenet, tmp_path, task=["classify"])
    with pytest.raises(CheckpointError, match=r"unknown task \['classify'\]"):
        export_checkpoint(path, tmp_path / "repo", tensorrt="off")
    assert not [p for p in (tmp_path / "repo").iterdir() if not p.name.startswith(".")]


def test_a_model_argument_its_config_refuses_names_the_checkpoint(lenet: Path, tmp_path: Path) -> None:
    ckpt = torch.load(lenet, weights_only=True)
    path = _altered(
        lenet, tmp_path, model={**ckpt["model"], "args": {**ckpt["model"]["args"], "num_classes": 0}}
    )
    with pytest.raises(CheckpointError, match=rf"^{path}: .*num_classes must be a positive integer"):
        export_checkpoint(path, tmp_path / "repo", tensorrt="off")


# The command, with the exporter replaced by one that receives SIGTERM half-way (its working directory
# made, nothing swapped in), as `timeout`, `docker stop` or a batch scheduler sends it.
SIGTERMED = textwrap.dedent(
    """
    import os, signal, sys
    import export.pipeline as pipeline
    from export.__main__ import main

    def stopped(ctx, work):
        (work / "graph.onnx").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the export")

    pipeline._exporter = lambda task: stopped
    sys.exit(main(sys.argv[1:]))
    """
)


def test_a_sigterm_stops_the_export_as_ctrl_c_does_leaving_nothing_behind(
    lenet: Path, tmp_path: Path
) -> None:
    work, repo = tmp_path / "tmp", tmp_path / "repo"
    work.mkdir()
    env = {**os.environ, "TMPDIR": str(work), "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", SIGTERMED, str(lenet), "--repository", str(repo), "--no-progress"]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert "interrupted" in done.stderr and "Traceback" not in done.stderr
    assert not [p.name for p in work.iterdir() if p.name.startswith("kiln-export-")]
    assert not repo.exists()  # made by the export, nothing written: removed again


@pytest.fixture(scope="module")
def transformer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_export_translate import _translator_checkpoint

    return _translator_checkpoint("transformer", tmp_path_factory.mktemp("translator"))


@pytest.mark.parametrize(
    ("tokenizers", "said"),
    [
        (None, "must be a dict of 'source' and 'target'"),
        ({"source": "{}"}, r"lacks \['target'\]"),
        ({"source": "not json", "target": "not json"}, "'source' is not a tokenizers JSON"),
    ],
)
def test_a_translator_checkpoint_with_broken_tokenizers_is_refused_naming_the_file(
    transformer: Path, tmp_path: Path, tokenizers: object, said: str
) -> None:
    path = _altered(transformer, tmp_path, tokenizers=tokenizers)
    with pytest.raises(CheckpointError, match=rf"^{path}: its 'tokenizers' {said}"):
        export_checkpoint(path, tmp_path / "repo", tensorrt="off")
    assert not [p for p in (tmp_path / "repo").iterdir() if not p.name.startswith(".")]
